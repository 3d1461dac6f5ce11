# SPDX-License-Identifier: Apache-2.0
#
# Install rules: headers (with the generated version.hpp), the library, a CMake package
# (bsallocConfig.cmake + bsallocConfigVersion.cmake + the exported bsalloc::bsalloc target) and a
# pkg-config file, and the licence (share/doc/bsalloc/LICENSE). Included from the root
# CMakeLists.txt after the bsalloc target is defined.
#
#   cmake --install build --prefix /some/prefix
#   find_package(bsalloc 0.1 REQUIRED)              # with /some/prefix in CMAKE_PREFIX_PATH
#   target_link_libraries(app PRIVATE bsalloc::bsalloc)
#
# Both the CMake package and bsalloc.pc are relocatable: they find the prefix from where they
# lie, so an installed tree can be moved or packaged as it is.

option(BSALLOC_INSTALL "Generate bsalloc's install rules" ${_bsalloc_top_level})
if(NOT BSALLOC_INSTALL)
  return()
endif()

include(CMakePackageConfigHelpers)

set(BSALLOC_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/bsalloc"
    CACHE STRING "Where bsallocConfig.cmake is installed (relative to the prefix)")
set(BSALLOC_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig"
    CACHE STRING "Where bsalloc.pc is installed (relative to the prefix)")

install(TARGETS bsalloc
  EXPORT bsallocTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT bsalloc_development
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT bsalloc_runtime
          NAMELINK_COMPONENT bsalloc_development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT bsalloc_runtime)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/bsalloc
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT bsalloc_development
  FILES_MATCHING PATTERN "*.hpp")
install(FILES ${PROJECT_BINARY_DIR}/include/bsalloc/version.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/bsalloc COMPONENT bsalloc_development)

install(FILES ${PROJECT_SOURCE_DIR}/LICENSE
  DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT bsalloc_runtime)

install(EXPORT bsallocTargets
  NAMESPACE bsalloc::
  FILE bsallocTargets.cmake
  DESTINATION ${BSALLOC_INSTALL_CMAKEDIR} COMPONENT bsalloc_development)

# Recorded in the package so consumers can ask how it was built.
if(BUILD_SHARED_LIBS)
  set(BSALLOC_PACKAGE_SHARED ON)
else()
  set(BSALLOC_PACKAGE_SHARED OFF)
endif()
if(BSALLOC_CHECKED)
  set(BSALLOC_PACKAGE_CHECKED ON)
  set(BSALLOC_PACKAGE_CHECKED_DEFINE 1)
else()
  set(BSALLOC_PACKAGE_CHECKED OFF)
  set(BSALLOC_PACKAGE_CHECKED_DEFINE 0)
endif()

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/bsallocConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/bsallocConfig.cmake
  INSTALL_DESTINATION ${BSALLOC_INSTALL_CMAKEDIR})
# 0.x: a minor release may break the API, so 0.1 accepts 0.1.* only.
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/cmake/bsallocConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/cmake/bsallocConfig.cmake
  ${PROJECT_BINARY_DIR}/cmake/bsallocConfigVersion.cmake
  DESTINATION ${BSALLOC_INSTALL_CMAKEDIR} COMPONENT bsalloc_development)

# pkg-config: prefix is found from the .pc file's own directory when the install dirs are
# relative (the usual case), so the file stays right after `cmake --install --prefix X`.
if(IS_ABSOLUTE "${BSALLOC_INSTALL_PKGCONFIGDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}"
   OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(BSALLOC_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(BSALLOC_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(BSALLOC_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH _bsalloc_pc_up "/root/${BSALLOC_INSTALL_PKGCONFIGDIR}" "/root")
  string(REGEX REPLACE "/$" "" _bsalloc_pc_up "${_bsalloc_pc_up}")
  set(BSALLOC_PC_PREFIX "\${pcfiledir}/${_bsalloc_pc_up}")
  set(BSALLOC_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(BSALLOC_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/bsalloc.pc.in ${PROJECT_BINARY_DIR}/bsalloc.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/bsalloc.pc
  DESTINATION ${BSALLOC_INSTALL_PKGCONFIGDIR} COMPONENT bsalloc_development)
