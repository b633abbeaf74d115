/* Runs the compiled digits model over a test set and prints its accuracy.
 *
 *   digits_demo inputs.f32 labels.u8
 *
 * inputs.f32: the test images as float32, one MODEL_INPUT_SIZE block per sample (what
 * export_test_data.py writes); labels.u8: one byte per sample. The model itself is integer
 * only: the float helpers in model.h quantize each input exactly as the compiled graph's
 * quantize node does. */
#include <stdio.h>
#include <stdlib.h>

#define MODEL_FLOAT_HELPERS
#include "model.h"

static long file_size(FILE *f)
{
    long n;
    if (fseek(f, 0, SEEK_END) != 0) return -1;
    n = ftell(f);
    rewind(f);
    return n;
}

int main(int argc, char **argv)
{
    FILE *fx, *fy;
    float x[MODEL_INPUT_SIZE];
    model_input_t q[MODEL_INPUT_SIZE];
    model_output_t out[MODEL_OUTPUT_SIZE];
    long samples, i, correct = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: %s inputs.f32 labels.u8\n", argv[0]);
        return 2;
    }
    fx = fopen(argv[1], "rb");
    fy = fopen(argv[2], "rb");
    if (!fx || !fy) {
        fprintf(stderr, "cannot open %s\n", !fx ? argv[1] : argv[2]);
        return 2;
    }
    samples = file_size(fy);
    if (samples <= 0 || file_size(fx) != samples * (long)sizeof x) {
        fprintf(stderr, "%s holds %ld bytes; expected %ld samples of %d floats\n", argv[1],
                file_size(fx), samples, MODEL_INPUT_SIZE);
        return 2;
    }
    for (i = 0; i < samples; i++) {
        int label = fgetc(fy), best = 0, k;
        if (fread(x, sizeof x, 1, fx) != 1 || label == EOF) {
            fprintf(stderr, "short read at sample %ld\n", i);
            return 2;
        }
        model_quantize_input(x, q);
        if (model_run(q, out) != 0) {
            fprintf(stderr, "model_run failed at sample %ld\n", i);
            return 1;
        }
        /* the output scale is positive, so the largest code is the largest logit */
        for (k = 1; k < MODEL_OUTPUT_SIZE; k++)
            if (out[k] > out[best]) best = k;
        correct += best == label;
    }
    printf("integer accuracy on %ld samples: %.2f %%\n", samples, 100.0 * correct / samples);
    fclose(fx);
    fclose(fy);
    return 0;
}
