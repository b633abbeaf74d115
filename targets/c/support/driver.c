/*
 * driver.c -- a test and benchmark driver for a model compiled by qcompile's C backend.
 *
 * Reads every input (MODEL_INPUT_BYTES_LIST, in order) from one binary file, runs the model
 * `repeat` times, and writes every output to another file:
 *     driver [input.bin [output.bin [repeat]]]
 * On an emulated Cortex-M the files go through semihosting. With QC_BENCH defined, bench_mark()
 * is called right before and right after each inference, so an instruction-counting emulator
 * plugin can bracket model_run_io().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

#ifdef QC_BENCH
void bench_mark(void) __attribute__((noinline));
void bench_mark(void) { __asm__ volatile("" ::: "memory"); }
#define MARK() bench_mark()
#else
#define MARK() ((void)0)
#endif

static uint32_t arena[(MODEL_ARENA_SIZE + 3) / 4 + 1];
static uint32_t in_words[(MODEL_INPUTS_TOTAL_BYTES + 3) / 4 + 1];
static uint32_t out_words[(MODEL_OUTPUTS_TOTAL_BYTES + 3) / 4 + 1];

int main(int argc, char **argv)
{
    static const long in_bytes[MODEL_NUM_INPUTS] = MODEL_INPUT_BYTES_LIST;
    static const long out_bytes[MODEL_NUM_OUTPUTS] = MODEL_OUTPUT_BYTES_LIST;
    const char *in_path = argc > 1 ? argv[1] : "input.bin";
    const char *out_path = argc > 2 ? argv[2] : "output.bin";
    long repeat = argc > 3 ? strtol(argv[3], NULL, 10) : 1;
    const void *inputs[MODEL_NUM_INPUTS];
    void *outputs[MODEL_NUM_OUTPUTS];
    uint8_t *ip = (uint8_t *)in_words, *op = (uint8_t *)out_words;
    FILE *f;
    long i;
    int rc = 0;

    for (i = 0; i < MODEL_NUM_INPUTS; i++) { inputs[i] = ip; ip += in_bytes[i]; }
    for (i = 0; i < MODEL_NUM_OUTPUTS; i++) { outputs[i] = op; op += out_bytes[i]; }
    f = fopen(in_path, "rb");
    if (!f || fread(in_words, 1, MODEL_INPUTS_TOTAL_BYTES, f) != MODEL_INPUTS_TOTAL_BYTES) {
        fprintf(stderr, "driver: cannot read %d bytes from %s\n", MODEL_INPUTS_TOTAL_BYTES, in_path);
        return 2;
    }
    fclose(f);
    for (i = 0; i < repeat; i++) {
        MARK();
        rc |= model_run_io(inputs, outputs, (uint8_t *)arena);
        MARK();
    }
    if (rc != 0) {
        fprintf(stderr, "driver: model_run_io returned %d\n", rc);
        return 3;
    }
    f = fopen(out_path, "wb");
    if (!f || fwrite(out_words, 1, MODEL_OUTPUTS_TOTAL_BYTES, f) != MODEL_OUTPUTS_TOTAL_BYTES) {
        fprintf(stderr, "driver: cannot write %s\n", out_path);
        return 2;
    }
    fclose(f);
    return 0;
}
