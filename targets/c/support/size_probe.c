/* size_probe.c -- the smallest program that runs the model, linked with --gc-sections: its size
 * minus that of an empty program (SIZE_PROBE_EMPTY) is the flash the model itself needs. */
#include "model.h"

#ifndef SIZE_PROBE_EMPTY
static uint32_t in_words[(MODEL_INPUTS_TOTAL_BYTES + 3) / 4 + 1];
static uint32_t out_words[(MODEL_OUTPUTS_TOTAL_BYTES + 3) / 4 + 1];
static uint32_t arena[(MODEL_ARENA_SIZE + 3) / 4 + 1];
#endif

int main(void)
{
#ifdef SIZE_PROBE_EMPTY
    return 0;
#else
    static const long in_bytes[MODEL_NUM_INPUTS] = MODEL_INPUT_BYTES_LIST;
    static const long out_bytes[MODEL_NUM_OUTPUTS] = MODEL_OUTPUT_BYTES_LIST;
    const void *inputs[MODEL_NUM_INPUTS];
    void *outputs[MODEL_NUM_OUTPUTS];
    uint8_t *ip = (uint8_t *)in_words, *op = (uint8_t *)out_words;
    int i;
    for (i = 0; i < MODEL_NUM_INPUTS; i++) { inputs[i] = ip; ip += in_bytes[i]; }
    for (i = 0; i < MODEL_NUM_OUTPUTS; i++) { outputs[i] = op; op += out_bytes[i]; }
    return model_run_io(inputs, outputs, (uint8_t *)arena);
#endif
}
