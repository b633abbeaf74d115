# CMake toolchain file for Arm Cortex-M with the GNU Arm Embedded toolchain.
#   cmake -DCMAKE_TOOLCHAIN_FILE=examples/firmware/arm-none-eabi.cmake -DQC_CPU=cortex-m7 ...
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
if(NOT QC_CPU)
  set(QC_CPU cortex-m4)
endif()
set(CMAKE_C_FLAGS_INIT "-mcpu=${QC_CPU} -mthumb -ffunction-sections -fdata-sections")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,--gc-sections --specs=nano.specs --specs=nosys.specs")
