// The protocols the dissector knows, in detection order: a new protocol is
// its folder and one line here.
#include "amqp/session.hpp"
#include "dns/session.hpp"
#include "http1/session.hpp"
#include "http2/session.hpp"
#include "icmp/session.hpp"
#include "postgres/session.hpp"
#include "mysql/session.hpp"
#include "mongodb/session.hpp"
#include "kafka/session.hpp"
#include "protocol.hpp"
#include "redis/session.hpp"
#include "websocket/session.hpp"

namespace tapwire::proto {

const std::vector<ProtocolInfo>& protocols() {
  static const Http1Protocol http1;
  static const Http2Protocol http2;
  static const AmqpProtocol amqp;
  static const PostgresProtocol postgres;
  static const MysqlProtocol mysql;
  static const MongoProtocol mongodb;
  static const KafkaProtocol kafka;
  static const RedisProtocol redis;
  static const DnsProtocol dns;
  static const IcmpProtocol icmp;
  static const std::vector<ProtocolInfo> all = {
      {kHttp1, "http", &http1, nullptr},
      {kHttp2, "http", &http2, nullptr},  // h2c with prior knowledge; by Upgrade through http
      {kGrpc, "http", nullptr, nullptr},  // an HTTP/2 stream with a gRPC content-type
      {kWebSocket, "ws", nullptr, nullptr},  // after an HTTP/1 upgrade
      {kAmqp, "amqp", &amqp, nullptr},  // AMQP 0-9-1
      {kPostgres, "postgres", &postgres, nullptr},
      {kMysql, "mysql", &mysql, nullptr},  // server greeting; a client command joined mid-connection
      {kMongoDb, "mongodb", &mongodb, nullptr},
      {kKafka, "kafka", &kafka, nullptr},
      {kRedis, "redis", &redis, nullptr},
      {kDns, "dns", &dns, &dns},
      {kIcmp, "icmp", nullptr, &icmp, true},  // ICMP and ICMPv6 messages
  };
  return all;
}

}  // namespace tapwire::proto
