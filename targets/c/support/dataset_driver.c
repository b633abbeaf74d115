/*
 * dataset_driver.c -- runs a model compiled by qcompile's C backend over a whole data set.
 *
 * The input file is a sequence of records, each holding every input of one model_run_io()
 * call (MODEL_INPUT_BYTES_LIST, in order, MODEL_INPUTS_TOTAL_BYTES in all). The model runs
 * once per record, and each call's outputs are appended to the output file as one record of
 * MODEL_OUTPUTS_TOTAL_BYTES:
 *     dataset_driver input.bin output.bin
 * One process for the whole set, so evaluating thousands of samples costs one start-up. A file
 * that ends inside a record is an error (the caller wrote records of another size).
 */
#include <stdint.h>
#include <stdio.h>

#include "model.h"

static uint32_t arena[(MODEL_ARENA_SIZE + 3) / 4 + 1];
static uint32_t in_words[(MODEL_INPUTS_TOTAL_BYTES + 3) / 4 + 1];
static uint32_t out_words[(MODEL_OUTPUTS_TOTAL_BYTES + 3) / 4 + 1];

int main(int argc, char **argv)
{
    static const long in_bytes[MODEL_NUM_INPUTS] = MODEL_INPUT_BYTES_LIST;
    static const long out_bytes[MODEL_NUM_OUTPUTS] = MODEL_OUTPUT_BYTES_LIST;
    const void *inputs[MODEL_NUM_INPUTS];
    void *outputs[MODEL_NUM_OUTPUTS];
    uint8_t *ip = (uint8_t *)in_words, *op = (uint8_t *)out_words;
    FILE *in, *out;
    size_t got;
    long i, records = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: %s input.bin output.bin\n", argv[0]);
        return 2;
    }
    for (i = 0; i < MODEL_NUM_INPUTS; i++) { inputs[i] = ip; ip += in_bytes[i]; }
    for (i = 0; i < MODEL_NUM_OUTPUTS; i++) { outputs[i] = op; op += out_bytes[i]; }
    in = fopen(argv[1], "rb");
    if (!in) {
        fprintf(stderr, "dataset_driver: cannot open %s\n", argv[1]);
        return 2;
    }
    out = fopen(argv[2], "wb");
    if (!out) {
        fprintf(stderr, "dataset_driver: cannot write %s\n", argv[2]);
        fclose(in);
        return 2;
    }
    for (;;) {
        got = fread(in_words, 1, MODEL_INPUTS_TOTAL_BYTES, in);
        if (got == 0 && feof(in))
            break;
        if (got != MODEL_INPUTS_TOTAL_BYTES) {
            fprintf(stderr, "dataset_driver: %s ends inside record %ld (%lu of %d bytes)\n",
                    argv[1], records, (unsigned long)got, MODEL_INPUTS_TOTAL_BYTES);
            fclose(in);
            fclose(out);
            return 2;
        }
        if (model_run_io(inputs, outputs, (uint8_t *)arena) != 0) {
            fprintf(stderr, "dataset_driver: model_run_io failed on record %ld\n", records);
            fclose(in);
            fclose(out);
            return 3;
        }
        if (fwrite(out_words, 1, MODEL_OUTPUTS_TOTAL_BYTES, out) != MODEL_OUTPUTS_TOTAL_BYTES) {
            fprintf(stderr, "dataset_driver: cannot write %s\n", argv[2]);
            fclose(in);
            fclose(out);
            return 2;
        }
        records++;
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 2;
}
