# SPDX-License-Identifier: Apache-2.0
#
# Run by bsalloc_doctest_cases() after a test executable is built (cmake -P): lists its test
# cases and writes CTEST_FILE, one add_test() per case. Inputs (-D): TEST_TARGET,
# TEST_EXECUTABLE, TEST_WORKING_DIR, TEST_TIMEOUT, CTEST_FILE.

execute_process(
  COMMAND "${TEST_EXECUTABLE}" --list-test-cases --no-intro=true --no-version=true
  OUTPUT_VARIABLE _output
  ERROR_VARIABLE _error
  RESULT_VARIABLE _result
  WORKING_DIRECTORY "${TEST_WORKING_DIR}")
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "${TEST_EXECUTABLE} --list-test-cases failed (${_result}):\n${_output}${_error}")
endif()

# Split on newlines only: characters CMake lists treat specially are swapped out first.
string(REPLACE "\\" "@bsalloc_bs@" _output "${_output}")
string(REPLACE ";" "@bsalloc_semi@" _output "${_output}")
string(REPLACE "[" "@bsalloc_lb@" _output "${_output}")
string(REPLACE "]" "@bsalloc_rb@" _output "${_output}")
string(REPLACE "\n" ";" _lines "${_output}")

set(_script "")
set(_count 0)
foreach(_line IN LISTS _lines)
  if(_line STREQUAL "" OR _line MATCHES "^=+$" OR _line MATCHES "^@bsalloc_lb@doctest@bsalloc_rb@ ")
    continue()
  endif()
  string(REPLACE "@bsalloc_rb@" "]" _line "${_line}")
  string(REPLACE "@bsalloc_lb@" "[" _line "${_line}")
  string(REPLACE "@bsalloc_semi@" ";" _line "${_line}")
  string(REPLACE "@bsalloc_bs@" "\\" _line "${_line}")
  # doctest's --test-case takes comma-separated filters; a comma (or backslash) in a name is
  # escaped with a backslash.
  string(REPLACE "\\" "\\\\" _filter "${_line}")
  string(REPLACE "," "\\," _filter "${_filter}")
  set(_name "${TEST_TARGET}: ${_line}")
  string(APPEND _script
    "add_test([==[${_name}]==] [==[${TEST_EXECUTABLE}]==] [==[--test-case=${_filter}]==])\n"
    "set_tests_properties([==[${_name}]==] PROPERTIES WORKING_DIRECTORY [==[${TEST_WORKING_DIR}]==]"
    " TIMEOUT ${TEST_TIMEOUT} FAIL_REGULAR_EXPRESSION [==[test cases: +0 [|]]==])\n")
  math(EXPR _count "${_count} + 1")
endforeach()
if(_count EQUAL 0)
  message(FATAL_ERROR "${TEST_EXECUTABLE} lists no test case:\n${_output}")
endif()
file(WRITE "${CTEST_FILE}" "${_script}")
