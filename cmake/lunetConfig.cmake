# find_package(lunet) for out-of-tree layer plugins: links lunet::lunet.
include(${CMAKE_CURRENT_LIST_DIR}/lunetTargets.cmake)
