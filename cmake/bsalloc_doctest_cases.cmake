# SPDX-License-Identifier: Apache-2.0
#
# bsalloc_doctest_cases(<target> [TIMEOUT seconds]): register every TEST_CASE of a doctest
# executable with CTest as its own test, named "<target>: <test case name>".
#
# The same scheme as doctest_discover_tests() from doctest's CMake package (a POST_BUILD step
# lists the cases with --list-test-cases and writes a CTest include file), done here because
# doctest 2.4's doctestAddTests.cmake cuts a name at ';' (and miscounts one with an unpaired
# '['), registering tests that select no case — and a doctest run that selects nothing exits 0.
# Here the listing is split on newlines only, and each test also fails if it ran no test case.
# Each case runs in a process of its own: `<exe> --test-case=<name, commas escaped>`.

set(_BSALLOC_DOCTEST_CASES_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/bsalloc_doctest_cases_add.cmake")

function(bsalloc_doctest_cases target)
  cmake_parse_arguments(_arg "" "TIMEOUT" "" ${ARGN})
  set(_timeout 900)
  if(_arg_TIMEOUT)
    set(_timeout ${_arg_TIMEOUT})
  endif()
  set(_tests_file "${CMAKE_CURRENT_BINARY_DIR}/${target}_cases.cmake")
  set(_include_file "${CMAKE_CURRENT_BINARY_DIR}/${target}_cases_include.cmake")
  add_custom_command(
    TARGET ${target} POST_BUILD
    BYPRODUCTS "${_tests_file}"
    COMMAND "${CMAKE_COMMAND}"
            -D "TEST_TARGET=${target}"
            -D "TEST_EXECUTABLE=$<TARGET_FILE:${target}>"
            -D "TEST_WORKING_DIR=${CMAKE_CURRENT_BINARY_DIR}"
            -D "TEST_TIMEOUT=${_timeout}"
            -D "CTEST_FILE=${_tests_file}"
            -P "${_BSALLOC_DOCTEST_CASES_SCRIPT}"
    VERBATIM)
  # Until the executable is built, one test that fails says so.
  file(WRITE "${_include_file}"
    "if(EXISTS \"${_tests_file}\")\n"
    "  include(\"${_tests_file}\")\n"
    "else()\n"
    "  add_test(${target}_NOT_BUILT ${target}_NOT_BUILT)\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_include_file}")
endfunction()
