// The doctest runner of unit_tests: every tests/*_test.cc links into one binary.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
