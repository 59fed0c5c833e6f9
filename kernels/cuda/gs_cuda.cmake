# CUDA detection for the whole build (DESIGN.md §2: only kernels/cuda and comm/comm_nccl.c see
# CUDA headers). Included from the top-level CMakeLists.txt before any add_subdirectory, because
# enable_language(CUDA) must happen in the highest directory whose targets link CUDA objects
# (every executable that links gs_kernels), and from tests/gpu/standalone.
#
# GS_CUDA: AUTO = build the CUDA kernels (and NCCL, see comm/) when nvcc is found,
#          ON   = required (configure fails without nvcc),
#          OFF  = never: the CPU-only build, gs_backend_cuda_create says "built without CUDA".
# Sets GS_HAVE_CUDA (ON/OFF) for kernels/ and tests/gpu/.
set(GS_CUDA "AUTO" CACHE STRING "Build the CUDA/NCCL parts: AUTO, ON or OFF")
set_property(CACHE GS_CUDA PROPERTY STRINGS AUTO ON OFF)
if(NOT GS_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "GS_CUDA=${GS_CUDA}: use AUTO, ON or OFF")
endif()

set(GS_HAVE_CUDA OFF)
if(NOT GS_CUDA STREQUAL "OFF")
  # check_language looks on PATH and CUDACXX; the toolkit's usual home is a fallback.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    find_program(_gs_nvcc nvcc)
    if(NOT _gs_nvcc)
      set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Ampere and Hopper only, to keep CI builds (2 cores) short; a GPU machine passes
    # -DCMAKE_CUDA_ARCHITECTURES=native (tests/gpu/run.sh).
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    # One shared libcudart for the kernels and comm_nccl.c (CUDA::cudart): two runtimes in one
    # process would not share streams reliably.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(GS_HAVE_CUDA ON)
    message(STATUS "gemmashard: CUDA kernels enabled (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                   "architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(GS_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GS_CUDA=ON but no CUDA compiler (nvcc) was found: put nvcc on PATH, set CUDACXX, "
                        "or configure with -DGS_CUDA=OFF for the CPU-only build")
  else()
    message(STATUS "gemmashard: CUDA kernels disabled (no nvcc found)")
  endif()
else()
  message(STATUS "gemmashard: CUDA kernels disabled (GS_CUDA=OFF)")
endif()
