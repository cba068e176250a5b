#include "vm/engine_selection.h"

#include "engine/engine_factory.h"

namespace keel {

Machine::EngineFactory default_engine_factory() {
  return [](Accel accel, EngineContext context, EngineConfig config) {
    return create_engine(accel, context, config);
  };
}

}  // namespace keel
