#include "vm/engine_selection.h"

#include "base/error.h"

namespace keel {

Machine::EngineFactory default_engine_factory() {
  return [](Accel accel, EngineContext context, EngineConfig config) -> std::unique_ptr<Engine> {
    throw Error(std::string("the ") + to_string(accel) + " engine is not built yet");
  };
}

}  // namespace keel
