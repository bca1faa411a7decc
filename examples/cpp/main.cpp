// fastdl from C++ (no Python): layer_norm and batch_norm, forward and backward through
// libtorch's autograd. Build with CMakeLists.txt beside this file; run as
//
//   fastdl_example [cpu|cuda]
//
// Output, one line each (machine-readable; tests/test_cpp_example.py checks it):
//   version <fastdl version> <torch version> <cpu|cuda>
//   <name> <shape as d0xd1x...> <v0> <v1> ...     (float64 values in row-major order)
#include <fastdl/fastdl.h>  // fastdl::layer_norm, fastdl::batch_norm, fastdl::build_info
#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <string>

namespace {

// Deterministic float64 input: element i (row-major) is sin(scale * i + phase). Python makes
// the same tensor with torch.sin(torch.arange(n, dtype=torch.float64) * scale + phase).
torch::Tensor wave(torch::IntArrayRef shape, double scale, double phase) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return torch::sin(torch::arange(n, torch::kFloat64) * scale + phase).reshape(shape);
}

// Prints "<name> <shape> <values...>" with 17 significant digits, which round-trip a double.
void print(const std::string& name, const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
  std::cout << name << ' ';
  for (int64_t d = 0; d < c.dim(); ++d) std::cout << (d ? "x" : "") << c.size(d);
  const double* v = c.data_ptr<double>();
  for (int64_t i = 0; i < c.numel(); ++i) std::cout << ' ' << std::setprecision(17) << v[i];
  std::cout << '\n';
}

}  // namespace

int main(int argc, char** argv) try {
  // The libfastdl loaded at run time says what it is; it must be the version of the CMake
  // package this program was compiled against, built for the torch whose headers we use.
  const fastdl::BuildInfo info = fastdl::build_info();
  if (info.version != FASTDL_EXPECTED_VERSION || info.torch.rfind(TORCH_VERSION, 0) != 0) {
    std::cerr << "libfastdl " << info.version << " (torch " << info.torch
              << ") does not match fastdl " << FASTDL_EXPECTED_VERSION << " / torch "
              << TORCH_VERSION << " used to compile\n";
    return 1;
  }
  std::cout << "version " << info.version << ' ' << info.torch << ' '
            << (info.cuda ? "cuda" : "cpu") << '\n';

  const torch::Device device(argc > 1 ? argv[1] : "cpu");
  if (device.is_cuda() && !info.cuda) {
    std::cerr << "this libfastdl was built without its CUDA kernels\n";
    return 1;
  }
  // Inputs are made on the CPU, then moved, so that every device sees the same values.
  auto on = [&](const torch::Tensor& t) { return t.to(device); };

  // --- layer_norm: normalise each trailing (3, 8) slice of a (2, 3, 8) input ----------------
  {
    // Tensors we want gradients for are leaves with requires_grad; backward fills .grad().
    torch::Tensor x = on(wave({2, 3, 8}, 0.37, 0.1)).requires_grad_();
    torch::Tensor weight = on(1 + 0.5 * wave({3, 8}, 0.21, 0.3)).requires_grad_();
    torch::Tensor bias = on(0.1 * wave({3, 8}, 0.45, 0.7)).requires_grad_();
    torch::Tensor grad_output = on(wave({2, 3, 8}, 0.29, 0.5));

    torch::Tensor y =
        fastdl::layer_norm(x, /*normalized_shape=*/{3, 8}, weight, bias, /*eps=*/1e-5);
    y.backward(grad_output);  // runs fastdl's backward op through the registered autograd Function

    print("layer_norm.input", x);
    print("layer_norm.weight", weight);
    print("layer_norm.bias", bias);
    print("layer_norm.grad_output", grad_output);
    print("layer_norm.output", y);
    print("layer_norm.input.grad", x.grad());
    print("layer_norm.weight.grad", weight.grad());
    print("layer_norm.bias.grad", bias.grad());
  }

  // --- batch_norm: training mode on an (N, C, L) = (4, 3, 5) input ---------------------------
  {
    torch::Tensor x = on(wave({4, 3, 5}, 0.53, 0.2)).requires_grad_();
    torch::Tensor weight = on(1 + 0.5 * wave({3}, 0.8, 0.4)).requires_grad_();
    torch::Tensor bias = on(0.1 * wave({3}, 1.1, 0.9)).requires_grad_();
    torch::Tensor grad_output = on(wave({4, 3, 5}, 0.31, 0.6));
    // Running statistics are buffers, not parameters: no gradient, updated in place.
    torch::Tensor running_mean = on(0.1 * wave({3}, 0.7, 0.2));
    torch::Tensor running_var = on(1 + 0.5 * wave({3}, 0.9, 0.5));
    print("batch_norm.running_mean", running_mean);
    print("batch_norm.running_var", running_var);

    torch::Tensor y = fastdl::batch_norm(x, running_mean, running_var, weight, bias,
                                         /*training=*/true, /*momentum=*/0.1, /*eps=*/1e-5);
    y.backward(grad_output);

    print("batch_norm.input", x);
    print("batch_norm.weight", weight);
    print("batch_norm.bias", bias);
    print("batch_norm.grad_output", grad_output);
    print("batch_norm.output", y);
    print("batch_norm.input.grad", x.grad());
    print("batch_norm.weight.grad", weight.grad());
    print("batch_norm.bias.grad", bias.grad());
    print("batch_norm.running_mean.updated", running_mean);
    print("batch_norm.running_var.updated", running_var);
  }
  return 0;
} catch (const c10::Error& e) {  // fastdl reports bad arguments as c10::Error, as torch does
  std::cerr << "fastdl_example: " << e.what_without_backtrace() << '\n';
  return 1;
}
