// systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram, "READY=1" and
// friends, to the unix socket $NOTIFY_SOCKET names (a path, or "@name" in the abstract namespace).
// Without NOTIFY_SOCKET (not started by systemd with Type=notify) it does nothing.
#pragma once

#include <string_view>

namespace keel::manager {

// Sends `state` ("READY=1\nMAINPID=123", "STOPPING=1", ...). Returns false if it could not (the
// daemon goes on: systemd then times the start out and says so in the journal).
bool notify_systemd(std::string_view state);

}  // namespace keel::manager
