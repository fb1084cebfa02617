"""GAIT-prop (Ahmad, van Gerven, Ambrogioni; NeurIPS 2020): invertible networks trained with
backpropagation, GAIT-prop and target propagation.

Layers, each importing only those below it (pyproject.toml states them for import-linter):
`cli`, `experiments`, `runs`, `engine`, `model`, `arrays`."""
