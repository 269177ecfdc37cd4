"""The alignment stage (:mod:`cvgl.align.stage`), its method registry and the methods (``methods/``), with their models and trainers."""
