#include "fastdl/common/checks.h"

namespace fastdl::checks {

bool& emulating_cuda() {
  thread_local bool emulating = false;
  return emulating;
}

}  // namespace fastdl::checks
