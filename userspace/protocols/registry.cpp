// The protocols the dissector knows, in detection order: a new protocol is
// its folder and one line here.
#include "dns/session.hpp"
#include "http1/session.hpp"
#include "http2/session.hpp"
#include "protocol.hpp"
#include "redis/session.hpp"
#include "websocket/session.hpp"

namespace tapwire::proto {

const std::vector<ProtocolInfo>& protocols() {
  static const Http1Protocol http1;
  static const Http2Protocol http2;
  static const RedisProtocol redis;
  static const DnsProtocol dns;
  static const std::vector<ProtocolInfo> all = {
      {kHttp1, "http", &http1, nullptr},
      {kHttp2, "http", &http2, nullptr},  // h2c with prior knowledge; by Upgrade through http
      {kGrpc, "http", nullptr, nullptr},  // an HTTP/2 stream with a gRPC content-type
      {kWebSocket, "ws", nullptr, nullptr},  // after an HTTP/1 upgrade
      {kRedis, "redis", &redis, nullptr},
      {kDns, "dns", &dns, &dns},
  };
  return all;
}

}  // namespace tapwire::proto
