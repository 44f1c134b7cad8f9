// The flow metrics (README "Flow metrics"): the sensor's status "flows"
// object rendered by the Prometheus exporter.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "metrics_exporter.hpp"

namespace {

TEST(FlowMetrics, RenderedFromTheStatus) {
  tapwire::MetricsExporter m("127.0.0.1:0");
  nlohmann::json flows = {
      {"active", {{"tcp", 3}, {"udp", 1}}},
      {"created", {{"tcp", 10}, {"udp", 4}}},
      {"evicted", {{"table_full", 2}, {"reuse_ring_full", 0}}},
      {"untracked_packets", 5},
      {"records", 42},
      {"pairs_folded", 7},
      {"pair_series",
       {{{"src_namespace", "shop"}, {"src_workload", "frontend"}, {"dst_namespace", "shop"},
         {"dst_workload", "cart"}, {"protocol", "tcp"}, {"bytes", 1000}, {"packets", 12}, {"connections", 2},
         {"resets", 1}, {"retransmissions", 3}},
        {{"src_namespace", "_other"}, {"src_workload", ""}, {"dst_namespace", ""}, {"dst_workload", ""},
         {"protocol", "udp"}, {"bytes", 50}, {"packets", 1}, {"connections", 1}, {"resets", 0},
         {"retransmissions", 0}}}},
  };
  m.set_sensor_status({{"flows", flows}});
  const std::string text = m.render();
  for (const char* line : {
           "tapwire_flows_active{protocol=\"tcp\"} 3",
           "tapwire_flows_total{protocol=\"udp\"} 4",
           "tapwire_flows_evicted_total{reason=\"table_full\"} 2",
           "tapwire_flow_untracked_packets_total 5",
           "tapwire_flow_records_total 42",
           "tapwire_flow_metric_pairs_folded_total 7",
           "tapwire_flow_bytes_total{src_namespace=\"shop\",src_workload=\"frontend\",dst_namespace=\"shop\","
           "dst_workload=\"cart\",protocol=\"tcp\"} 1000",
           "tapwire_flow_packets_total{src_namespace=\"_other\",src_workload=\"\",dst_namespace=\"\","
           "dst_workload=\"\",protocol=\"udp\"} 1",
           "tapwire_flow_connections_total{src_namespace=\"shop\",src_workload=\"frontend\",dst_namespace=\"shop\","
           "dst_workload=\"cart\",protocol=\"tcp\"} 2",
           "tapwire_tcp_resets_total{src_namespace=\"shop\",src_workload=\"frontend\",dst_namespace=\"shop\","
           "dst_workload=\"cart\",protocol=\"tcp\"} 1",
           "tapwire_tcp_retransmissions_total{src_namespace=\"shop\",src_workload=\"frontend\",dst_namespace=\"shop\","
           "dst_workload=\"cart\",protocol=\"tcp\"} 3",
       })
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  EXPECT_EQ(text.find("tapwire_tcp_resets_total{src_namespace=\"_other\""), std::string::npos) << "TCP only";
  // No flows object (an older status): no flow families.
  m.set_sensor_status(nlohmann::json::object());
  EXPECT_EQ(m.render().find("tapwire_flows_active"), std::string::npos);
}

}  // namespace
