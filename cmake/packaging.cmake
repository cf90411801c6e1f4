# Install rules of the client package: `cmake --install BUILD [--prefix DIR]` installs the C++
# client (optd::client), its C ABI (optd::client_c), the headers, optdConfig.cmake for
# find_package(optd CONFIG) and optd.pc / optd_client_c.pc for pkg-config. The targets add
# themselves to the export set optdTargets in client/ and proto/; the server is not installed
# (it ships as a container image, deploy/).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(OPTD_CMAKE_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/optd)
install(EXPORT optdTargets
  NAMESPACE optd::
  DESTINATION ${OPTD_CMAKE_INSTALL_DIR}
  COMPONENT client)
configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/optdConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/optdConfig.cmake
  INSTALL_DESTINATION ${OPTD_CMAKE_INSTALL_DIR})
write_basic_package_version_file(
  ${CMAKE_CURRENT_BINARY_DIR}/optdConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/optdConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/optdConfigVersion.cmake
        DESTINATION ${OPTD_CMAKE_INSTALL_DIR}
        COMPONENT client)

# The .pc files name the install prefix, so they are generated at install time: a
# `cmake --install --prefix DIR` must get DIR, not the configure-time CMAKE_INSTALL_PREFIX.
foreach(_pc optd optd_client_c)
  install(CODE "
    set(CMAKE_INSTALL_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
    set(CMAKE_INSTALL_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
    set(PROJECT_VERSION \"${PROJECT_VERSION}\")
    configure_file(\"${CMAKE_CURRENT_LIST_DIR}/${_pc}.pc.in\"
                   \"${CMAKE_CURRENT_BINARY_DIR}/pc-install/${_pc}.pc\" @ONLY)
    file(INSTALL \"${CMAKE_CURRENT_BINARY_DIR}/pc-install/${_pc}.pc\"
         DESTINATION \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig\")"
    COMPONENT client)
endforeach()
