# optd_server_support: checkpoint files and Prometheus metrics of the server. Included by
# server/CMakeLists.txt; paths are relative to this folder.
find_package(prometheus-cpp CONFIG REQUIRED)

add_library(optd_server_support STATIC
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint_crc32c.cc
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint_format.cc
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint_file.cc
  ${CMAKE_CURRENT_LIST_DIR}/metrics.cc
  ${CMAKE_CURRENT_LIST_DIR}/process_metrics.cc)
# Sources include "server/..." paths from the repository root.
target_include_directories(optd_server_support PUBLIC ${PROJECT_SOURCE_DIR})
target_compile_options(optd_server_support PRIVATE ${OPTD_WARNINGS})
target_link_libraries(optd_server_support
  PUBLIC optd_core prometheus-cpp::pull prometheus-cpp::core
         absl::status absl::statusor absl::strings absl::core_headers)

# Loopback HTTP GET of /metrics for tests, benchmarks and tools (not linked into optd).
add_library(optd_metrics_http_get STATIC ${CMAKE_CURRENT_LIST_DIR}/metrics_http_get.cc)
target_include_directories(optd_metrics_http_get PUBLIC ${PROJECT_SOURCE_DIR})
target_compile_options(optd_metrics_http_get PRIVATE ${OPTD_WARNINGS})
target_link_libraries(optd_metrics_http_get PUBLIC absl::status absl::statusor absl::strings)

if(OPTD_BUILD_TESTS)
  add_executable(optd_server_support_tests
    ${CMAKE_CURRENT_LIST_DIR}/checkpoint_crc32c_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/checkpoint_file_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/metrics_test.cc)
  target_compile_options(optd_server_support_tests PRIVATE ${OPTD_WARNINGS})
  target_link_libraries(optd_server_support_tests
    PRIVATE optd_server_support optd_metrics_http_get GTest::gtest GTest::gtest_main Threads::Threads)
  gtest_discover_tests(optd_server_support_tests DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "unit")
endif()
