# Default CUDA architectures for a toolkit version (one place; tests/test_cuda_build.py runs this file).
#
#   aminet_cuda_architectures(<nvcc version, e.g. 12.6> <out var>)
#
# Each entry is listed from the first CUDA release whose nvcc compiles it, so an older toolkit builds
# what it can instead of failing on an unknown sm_XX:
#   87 Jetson Orin: 11.4;  80 A100 / 86 RTX 30: 11.1;  89 RTX 40 / L4 and 90 H100/H200: 11.8;
#   120 RTX 50 (Blackwell): 12.8.  Below 11.4 there is no Orin code (a warning); below 11.1 nothing (an error).
# Script mode, for tests: cmake -DAMINET_CUDA_VERSION=12.6 -P cmake/cuda_architectures.cmake prints the list.
function(aminet_cuda_architectures version out_var)
  set(archs "")
  if(version VERSION_GREATER_EQUAL 11.4)
    list(APPEND archs 87)
  endif()
  if(version VERSION_GREATER_EQUAL 11.1)
    list(APPEND archs 80 86)
  endif()
  if(version VERSION_GREATER_EQUAL 11.8)
    list(APPEND archs 89 90)
  endif()
  if(version VERSION_GREATER_EQUAL 12.8)
    list(APPEND archs 120)
  endif()
  if(NOT archs)
    message(FATAL_ERROR "CUDA ${version} compiles none of the supported architectures (SM 80+ needs CUDA >= 11.1): "
                        "install a newer toolkit, or pass -DCMAKE_CUDA_ARCHITECTURES=<list> yourself")
  endif()
  if(version VERSION_LESS 11.4)
    message(WARNING "CUDA ${version} cannot compile for Jetson Orin (sm_87 needs CUDA >= 11.4); building ${archs}")
  endif()
  set(${out_var} "${archs}" PARENT_SCOPE)
endfunction()

# The version of an nvcc executable ("13.0" from "Cuda compilation tools, release 13.0, V13.0.88").
function(aminet_nvcc_version nvcc out_var)
  execute_process(COMMAND "${nvcc}" --version OUTPUT_VARIABLE text RESULT_VARIABLE rc)
  string(REGEX MATCH "release ([0-9]+\\.[0-9]+)" _ "${text}")
  if(NOT rc EQUAL 0 OR NOT CMAKE_MATCH_1)
    message(FATAL_ERROR "could not read the CUDA version from `${nvcc} --version`: ${text}")
  endif()
  set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(DEFINED AMINET_NVCC)
    aminet_nvcc_version("${AMINET_NVCC}" AMINET_CUDA_VERSION)
  endif()
  aminet_cuda_architectures("${AMINET_CUDA_VERSION}" archs)
  message("${archs}")
endif()
