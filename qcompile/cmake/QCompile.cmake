# QCompile.cmake: compile a neural network with qcompile as part of a CMake build.
#
#   execute_process(COMMAND qcompile --cmake-dir OUTPUT_VARIABLE QCOMPILE_CMAKE_DIR
#                   OUTPUT_STRIP_TRAILING_WHITESPACE)
#   list(APPEND CMAKE_MODULE_PATH "${QCOMPILE_CMAKE_DIR}")
#   include(QCompile)
#
#   qcompile_add_model(digits
#       MODEL       ${CMAKE_CURRENT_SOURCE_DIR}/digits_cnn.onnx
#       TARGET      c99                      # or TARGET_FILE my_board.toml
#       CALIBRATION ${CMAKE_CURRENT_SOURCE_DIR}/digits_calib.npz)
#   target_link_libraries(app PRIVATE digits)
#
# qcompile_add_model(<name> MODEL <file> (TARGET <name> | TARGET_FILE <file>)
#                    [CALIBRATION <npz | image folder | module:function>]
#                    [PIPELINE <pipeline>] [BACKEND <backend>] [OUTPUT_DIR <dir>]
#                    [INPUT_SHAPE <name=d1,d2,...>...] [EXTRA_ARGS <arg>...] [NO_LIBRARY])
#
# The model is compiled at build time by `qcompile compile ... --depfile`, so it is rebuilt
# when the model, the calibration data (every image of a folder, the module of a function) or
# the target file change. The output folder (default: <binary dir>/<name>) holds the generated
# sources, report.json and manifest.json. <name> becomes a static library of the generated C
# (through qcompile_all.c, which includes every emitted source) with the folder as a public
# include directory; NO_LIBRARY makes <name> a plain custom target instead (backends that do
# not emit C). The output folder is available as the target property QCOMPILE_OUTPUT_DIR and
# the variable <name>_QCOMPILE_DIR.
#
# qcompile itself is run as ${QCOMPILE_COMMAND} (a list: e.g. "python3;-m;qcompile"), found
# on PATH by default.

if(CMAKE_VERSION VERSION_LESS 3.20)
  message(FATAL_ERROR "QCompile.cmake needs CMake 3.20 or later (DEPFILE on every generator)")
endif()

if(NOT QCOMPILE_COMMAND)
  find_program(QCOMPILE_EXECUTABLE qcompile)
  if(QCOMPILE_EXECUTABLE)
    set(QCOMPILE_COMMAND "${QCOMPILE_EXECUTABLE}")
  endif()
endif()

# Functions keep the policies in force where they are defined: depfile paths are handled the
# 3.20+ way (relative to the binary dir, absolute paths as they are) whatever the caller sets.
cmake_policy(PUSH)
cmake_policy(SET CMP0116 NEW)

function(qcompile_add_model name)
  set(flags NO_LIBRARY)
  set(one MODEL TARGET TARGET_FILE CALIBRATION PIPELINE BACKEND OUTPUT_DIR)
  set(multi INPUT_SHAPE EXTRA_ARGS)
  cmake_parse_arguments(PARSE_ARGV 1 QC "${flags}" "${one}" "${multi}")
  if(QC_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "qcompile_add_model(${name}): unknown arguments ${QC_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT QC_MODEL)
    message(FATAL_ERROR "qcompile_add_model(${name}): MODEL is required")
  endif()
  if(NOT QC_TARGET AND NOT QC_TARGET_FILE)
    message(FATAL_ERROR "qcompile_add_model(${name}): give TARGET <name> or TARGET_FILE <file>")
  endif()
  if(NOT QCOMPILE_COMMAND)
    message(FATAL_ERROR "qcompile_add_model(${name}): qcompile not found on PATH; set "
                        "QCOMPILE_COMMAND (e.g. -DQCOMPILE_COMMAND=\"python3;-m;qcompile\")")
  endif()

  get_filename_component(model "${QC_MODEL}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  set(out "${CMAKE_CURRENT_BINARY_DIR}/${name}")
  if(QC_OUTPUT_DIR)
    get_filename_component(out "${QC_OUTPUT_DIR}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")
  endif()
  set(depfile "${CMAKE_CURRENT_BINARY_DIR}/${name}.qcompile.d")

  set(args compile "${model}" -o "${out}" --force --quiet --depfile "${depfile}")
  set(depends "${model}")
  if(QC_TARGET)
    list(APPEND args --target "${QC_TARGET}")
  endif()
  if(QC_TARGET_FILE)
    get_filename_component(tfile "${QC_TARGET_FILE}" ABSOLUTE
                           BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND args --target-file "${tfile}")
    list(APPEND depends "${tfile}")
  endif()
  if(QC_CALIBRATION)
    set(calib "${QC_CALIBRATION}")
    # a path (file or folder) is made absolute; module:function is passed as written
    if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${calib}" OR IS_ABSOLUTE "${calib}")
      get_filename_component(calib "${calib}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
      if(NOT IS_DIRECTORY "${calib}")
        list(APPEND depends "${calib}")
      endif()
    endif()
    list(APPEND args --calibration "${calib}")
  endif()
  if(QC_PIPELINE)
    list(APPEND args --pipeline "${QC_PIPELINE}")
  endif()
  if(QC_BACKEND)
    list(APPEND args --backend "${QC_BACKEND}")
  endif()
  foreach(shape IN LISTS QC_INPUT_SHAPE)
    list(APPEND args --input-shape "${shape}")
  endforeach()
  list(APPEND args ${QC_EXTRA_ARGS})

  set(outputs "${out}/manifest.json")
  if(NOT QC_NO_LIBRARY)
    list(APPEND outputs "${out}/qcompile_all.c")
  endif()
  add_custom_command(
    OUTPUT ${outputs}
    COMMAND ${QCOMPILE_COMMAND} ${args}
    DEPENDS ${depends}
    DEPFILE "${depfile}"
    WORKING_DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}"
    COMMENT "qcompile: compiling ${QC_MODEL} into ${out}"
    VERBATIM)

  if(QC_NO_LIBRARY)
    add_custom_target(${name} ALL DEPENDS ${outputs})
  else()
    add_library(${name} STATIC "${out}/qcompile_all.c")
    target_include_directories(${name} PUBLIC "${out}")
  endif()
  set_property(TARGET ${name} PROPERTY QCOMPILE_OUTPUT_DIR "${out}")
  set(${name}_QCOMPILE_DIR "${out}" PARENT_SCOPE)
endfunction()

cmake_policy(POP)
