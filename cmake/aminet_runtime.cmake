# libaminet: the C runtime (included by the top-level CMakeLists.txt when AMINET_BUILD_RUNTIME is ON).
# Needs OpenVINO's CMake config (a system install, or the openvino wheel's openvino/cmake, asked of the
# Python on PATH when OpenVINO_DIR is not given), nlohmann_json (Debian nlohmann-json3-dev) and OpenSSL
# (libssl-dev); where one is missing the library is left out and the configure log says why.
if(NOT OpenVINO_DIR)
  find_program(AMINET_PYTHON NAMES python3 python)
  if(AMINET_PYTHON)
    execute_process(COMMAND ${AMINET_PYTHON} -c "import openvino, os; print(os.path.dirname(openvino.__file__))"
      OUTPUT_VARIABLE _aminet_ov_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _aminet_ov_rc)
    if(_aminet_ov_rc EQUAL 0 AND EXISTS "${_aminet_ov_dir}/cmake/OpenVINOConfig.cmake")
      set(OpenVINO_DIR "${_aminet_ov_dir}/cmake" CACHE PATH "OpenVINOConfig.cmake's folder")
    endif()
  endif()
endif()
find_package(OpenVINO QUIET COMPONENTS Runtime)
find_package(nlohmann_json 3 QUIET)
find_package(OpenSSL QUIET COMPONENTS Crypto)
set(_aminet_missing "")
foreach(_dep OpenVINO nlohmann_json OpenSSL)
  if(NOT ${_dep}_FOUND)
    list(APPEND _aminet_missing ${_dep})
  endif()
endforeach()
if(_aminet_missing)
  message(STATUS "libaminet is not built: ${_aminet_missing} not found (OpenVINO: pip install openvino or set "
                 "OpenVINO_DIR; Debian: apt-get install nlohmann-json3-dev libssl-dev)")
  return()
endif()

message(STATUS "libaminet: backend openvino (OpenVINO ${OpenVINO_VERSION}); the tensorrt backend is not part "
               "of libaminet yet (asking for it returns AMINET_ERR_BACKEND_UNAVAILABLE)")

# one version, the Python package's
file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/aminet_edge/__init__.py _aminet_version_line REGEX "^__version__ = ")
string(REGEX REPLACE "^__version__ = \"([^\"]+)\".*" "\\1" AMINET_VERSION "${_aminet_version_line}")

set(AMINET_SANITIZER_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
add_library(aminet SHARED
  csrc/runtime/aminet.cpp csrc/runtime/bundle.cpp csrc/runtime/decide.cpp csrc/runtime/detector.cpp
  csrc/runtime/openvino_backend.cpp csrc/runtime/preprocess.cpp)
include(GNUInstallDirs)
target_include_directories(aminet PUBLIC
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/csrc/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_definitions(aminet PRIVATE AMINET_BUILDING_LIBRARY AMINET_VERSION_STRING="${AMINET_VERSION}")
# -ffp-contract=off: no fused multiply-add (aarch64 fuses by default), so preprocessing and map resizing
# round as Pillow and numpy do (parity to float32 rounding, docs/c-api.md)
target_compile_options(aminet PRIVATE -ffp-contract=off -Wall -Wextra)
target_link_libraries(aminet PRIVATE openvino::runtime nlohmann_json::nlohmann_json OpenSSL::Crypto)
set_target_properties(aminet PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
# AMINET_WHEEL_LAYOUT (setup.py sets it): one file libaminet.so, no version symlinks (a wheel cannot hold
# symlinks), whose RUNPATH is $ORIGIN/../../openvino/libs: from aminet_edge/lib/, the openvino wheel's
# libraries in the same site-packages. Otherwise libaminet.so.<version> with its SONAME link, and the
# OpenVINO folder it was linked with as RUNPATH.
option(AMINET_WHEEL_LAYOUT "Install libaminet for the Python wheel: unversioned, RUNPATH relative to openvino/libs" OFF)
if(AMINET_WHEEL_LAYOUT)
  set_target_properties(aminet PROPERTIES INSTALL_RPATH "$ORIGIN/../../openvino/libs")
else()
  set_target_properties(aminet PROPERTIES VERSION ${AMINET_VERSION} SOVERSION 0 INSTALL_RPATH_USE_LINK_PATH ON)
endif()
if(AMINET_SANITIZE)
  target_compile_options(aminet PRIVATE ${AMINET_SANITIZER_FLAGS})
  target_link_options(aminet PRIVATE ${AMINET_SANITIZER_FLAGS})
endif()

# cmake --install (component "runtime"): lib/libaminet.so, include/aminet/aminet.h(pp),
# lib/cmake/aminet/aminetConfig.cmake, so that find_package(aminet) gives aminet::aminet. With
# `--component runtime --prefix <the aminet_edge package folder>`, `aminet-edge info` finds them.
include(CMakePackageConfigHelpers)
install(TARGETS aminet EXPORT aminetTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)
install(FILES csrc/include/aminet/aminet.h csrc/include/aminet/aminet.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/aminet COMPONENT runtime)
install(EXPORT aminetTargets NAMESPACE aminet:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/aminet COMPONENT runtime)
configure_package_config_file(cmake/aminetConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/aminetConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/aminet)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/aminetConfigVersion.cmake VERSION ${AMINET_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/aminetConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/aminetConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/aminet COMPONENT runtime)
add_library(aminet::aminet ALIAS aminet)

enable_language(C)
enable_testing()
add_executable(aminet_c_test tests/c/test_aminet.c)
target_link_libraries(aminet_c_test PRIVATE aminet)
find_package(Threads REQUIRED)
target_link_libraries(aminet_c_test PRIVATE Threads::Threads m)
set_target_properties(aminet_c_test PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON)
target_compile_options(aminet_c_test PRIVATE -Wall -Wextra -Werror)
if(AMINET_SANITIZE)
  target_compile_options(aminet_c_test PRIVATE ${AMINET_SANITIZER_FLAGS})
  target_link_options(aminet_c_test PRIVATE ${AMINET_SANITIZER_FLAGS})
endif()
# the test vectors and bundle are written by tests/test_c_api.py, which runs ctest with
# AMINET_TEST_VECTORS set (docs/c-api.md, "Test vectors")
add_test(NAME aminet_c_api COMMAND aminet_c_test)
# the resize alone, compared with Pillow bit for bit by tests/test_c_api.py
add_executable(aminet_resize_check tests/c/resize_check.cpp csrc/runtime/preprocess.cpp)
target_include_directories(aminet_resize_check PRIVATE csrc/include csrc/runtime)
target_compile_options(aminet_resize_check PRIVATE -ffp-contract=off)
