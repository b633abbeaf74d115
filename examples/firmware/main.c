/*
 * A firmware-style application around a model compiled by qcompile's C backend.
 *
 * What a microcontroller application does with the generated code:
 *   - the activation memory is one arena whose size is known at compile time
 *     (MODEL_ARENA_SIZE); here it is placed by the application (e.g. in fast on-chip RAM),
 *     so it goes through model_run_arena();
 *   - a sensor fills a float frame; model_quantize_input() turns it into the model's integer
 *     input exactly as the compiled graph's quantize node would;
 *   - model_run_arena() runs the integer-only network (no heap, no floating point);
 *   - the output codes are dequantized for reporting and the best class is picked.
 *
 * Build it against a compiled model folder with CMake (see CMakeLists.txt); on a host it prints
 * to stdout, on a board printf goes wherever the C library sends it (semihosting under QEMU).
 */
#include <stdio.h>

#define MODEL_FLOAT_HELPERS
#include "model.h"

/* The arena: 4-byte aligned storage the application owns. On a real part, a section attribute
 * (e.g. __attribute__((section(".dtcm")))) would put it into tightly coupled memory. */
static uint32_t arena_words[(MODEL_ARENA_SIZE + 3) / 4 + 1];

/* A stand-in for a sensor driver: a deterministic synthetic frame, values in [0, 1]. */
static void sensor_read(float *frame, int n)
{
    int i;
    for (i = 0; i < n; i++)
        frame[i] = (float)((i * 37) % 17) / 16.0f;
}

int main(void)
{
    static float frame[MODEL_INPUT_SIZE];
    static model_input_t input[MODEL_INPUT_SIZE];
    static model_output_t output[MODEL_OUTPUT_SIZE];
    static float scores[MODEL_OUTPUT_SIZE];
    int i, best = 0;

    sensor_read(frame, MODEL_INPUT_SIZE);
    model_quantize_input(frame, input);
    if (model_run_arena(input, output, (uint8_t *)arena_words) != 0) {
        printf("model_run_arena failed\n");
        return 1;
    }
    model_dequantize_output(output, scores);
    for (i = 0; i < MODEL_OUTPUT_SIZE; i++) {
        printf("output %d: code %d score %.4f\n", i, (int)output[i], (double)scores[i]);
        if (output[i] > output[best])
            best = i;
    }
    printf("class %d (arena %d bytes, %d MACs)\n", best, MODEL_ARENA_SIZE, MODEL_MACS);
    return 0;
}
