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

}  // namespace tapwire::flows
