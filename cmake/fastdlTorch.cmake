# fastdl_torch_target(torch_dir with_cuda nvidia_root abi)
#
# Defines the imported target fastdl::torch: torch's headers and libraries (plus the CUDA
# runtime and torch's CUDA libraries when with_cuda), found from the torch package folder.
# Shared by fastdl's own build and by fastdlConfig.cmake, so C++ programs get the same.
#
# We do not use find_package(Torch): for a CUDA build of torch it insists on a complete CUDA
# toolkit (cuDNN, NVRTC, cuBLAS ... headers and libraries) even for CPU-only code, which a bare
# nvcc install lacks; the headers and libraries fastdl needs are all in the torch and
# nvidia-* wheels.
macro(fastdl_torch_target torch_dir with_cuda nvidia_root abi)
  if(NOT TARGET fastdl::torch)
    add_library(fastdl::torch INTERFACE IMPORTED)
    set(_fastdl_torch_libs
      "${torch_dir}/lib/libtorch.so" "${torch_dir}/lib/libtorch_cpu.so" "${torch_dir}/lib/libc10.so")
    set(_fastdl_torch_includes
      "${torch_dir}/include" "${torch_dir}/include/torch/csrc/api/include")
    # at::parallel_for is inline OpenMP code in torch's headers (AT_PARALLEL_OPENMP): compile
    # with -fopenmp and link the libgomp torch ships, so there is one OpenMP runtime and
    # torch.set_num_threads governs our kernels too. Without it parallel_for runs serially.
    set(_fastdl_torch_options "")
    file(GLOB _fastdl_gomp "${torch_dir}/lib/libgomp*.so*")
    if(_fastdl_gomp)
      list(GET _fastdl_gomp 0 _fastdl_gomp)
      list(APPEND _fastdl_torch_libs "${_fastdl_gomp}")
      set(_fastdl_torch_options "$<$<COMPILE_LANGUAGE:CXX>:-fopenmp>")
    endif()
    if(${with_cuda})
      list(APPEND _fastdl_torch_libs
        "${torch_dir}/lib/libtorch_cuda.so" "${torch_dir}/lib/libc10_cuda.so")
      include(CMakeFindDependencyMacro)
      find_dependency(CUDAToolkit)
      list(APPEND _fastdl_torch_libs CUDA::cudart)
      # torch's CUDA headers include cuBLAS/cuSPARSE/... headers: take them from the wheels
      # when the toolkit lacks them.
      if(NOT "${nvidia_root}" STREQUAL "" AND EXISTS "${nvidia_root}/include")
        list(APPEND _fastdl_torch_includes "${nvidia_root}/include")
      endif()
    endif()
    set_target_properties(fastdl::torch PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${_fastdl_torch_includes}"
      INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${abi}"
      INTERFACE_COMPILE_FEATURES cxx_std_20
      INTERFACE_COMPILE_OPTIONS "${_fastdl_torch_options}"
      INTERFACE_LINK_LIBRARIES "${_fastdl_torch_libs}")
  endif()
endmacro()
