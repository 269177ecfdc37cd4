"""Stages chained in run folders (:mod:`cvgl.orchestration.chain`), sweeps (spec, execution, table, plot) and the demos."""
