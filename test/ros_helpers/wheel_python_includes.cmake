# Injected with -DCMAKE_PROJECT_INCLUDE=<this file> to build an UNMODIFIED ROS interface package
# (the vendored composition_interfaces of the launch tests) against the PyPI ros-* wheels.
#
# Why: the wheels export *__rosidl_generator_py targets whose include directories point at the
# wheel builder's /opt/python/... tree, and CMake refuses to generate (kp_perception_msgs/CMakeLists.txt
# has the same fix inline). Target properties are read at generate time, so a call deferred to the
# end of the top-level CMakeLists can still point them at this machine's Python and NumPy headers.
find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)

function(_kp_fix_wheel_python_includes)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    if(_target MATCHES "__rosidl_generator_py$")
      get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
      foreach(_dir IN LISTS _dirs)
        if(_dir AND NOT EXISTS "${_dir}")
          set_target_properties(${_target} PROPERTIES
            INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
          break()
        endif()
      endforeach()
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _kp_fix_wheel_python_includes)
