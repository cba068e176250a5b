// The engine a Machine gets when its creator does not supply one: create_engine() from
// engine/engine_factory.h, which resolves --accel auto through the KVM probe.
#pragma once

#include "vm/machine.h"

namespace keel {

Machine::EngineFactory default_engine_factory();

}  // namespace keel
