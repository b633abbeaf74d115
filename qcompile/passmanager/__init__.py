"""The pass manager: named passes run over a graph as a pipeline, with a shared `PassContext`.

    from qcompile.passmanager import PassContext, run_pipeline
    ctx = run_pipeline(graph, "fixpoint(fold-constants,remove-identity,dce)", PassContext(verify=True))

Modules: `options` (typed pass options), `registry` (Pass, register_pass), `pipeline` (the
pipeline grammar), `context` (PassContext, diagnostics, instruments), `runner` (run_pipeline).
"""
from .context import (Diagnostic, DumpIRInstrument, Instrument, PassContext, PassRecord, PassRun,
                      TimingInstrument, VerifyInstrument)
from .options import OptionSpec
from .pipeline import Fixpoint, Pipeline, parse_pipeline
from .registry import (FunctionPass, Pass, PassInfo, all_passes, get_pass, pass_info, register_pass,
                       unregister_pass)
from .runner import PassCrash, run_pipeline

__all__ = ["Diagnostic", "DumpIRInstrument", "Instrument", "PassContext", "PassRecord", "PassRun",
           "TimingInstrument", "VerifyInstrument", "OptionSpec", "Fixpoint", "Pipeline",
           "parse_pipeline", "FunctionPass", "Pass", "PassInfo", "all_passes", "get_pass",
           "pass_info", "register_pass", "unregister_pass", "PassCrash", "run_pipeline"]
