// Flows and passive DNS into the dissection DB (its flows and dns_names
// tables, docs/DISSECTION_DB.md).
#pragma once

#include "call.hpp"
#include "call_db.hpp"
#include "flow_record.hpp"
#include "passive_dns.hpp"

namespace tapwire::flows {

// The flows-table row of a flow (its record as JSON, the columns to filter on).
dissect::CallDb::FlowRow flow_db_row(const Flow& f);
// Upserts the flow by id.
void store_flow(dissect::CallDb& db, const Flow& f);
// The A/AAAA answers of a DNS call (CNAMEs followed) into dns_names and, if
// given, `dns`. Does nothing for other calls.
void store_dns_call(dissect::CallDb* db, PassiveDns* dns, const dissect::Call& c);

// Every flow of a flow directory (a snapshot's flows/) into the DB, named by
// the identity stream in identity_dir ("" = none) and `dns` (may be null).
// Returns the flows stored; throws std::runtime_error if the directory is
// missing.
size_t store_flow_dir(dissect::CallDb& db, const std::string& flow_dir, const std::string& identity_dir,
                      const PassiveDns* dns);
// The DB's dns_names as passive DNS (each row's first and last answer).
void load_dns_names(dissect::CallDb& db, PassiveDns& dns, uint64_t to_ns = 0);

}  // namespace tapwire::flows
