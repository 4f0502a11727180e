"""The application layer: the ``clvq`` command line, the main job and the comparison runner.

Nothing in the library imports this package.  It holds the argument
parsing (:mod:`~clvqlearn.cli.options`, one dataclass per subcommand, read
by ``jsonargparse``), the output-folder policy and all printing:

``clvq extract``   texts -> a saved LayerPairs folder
``clvq fit``       one of the four concept methods -> a saved model
``clvq describe``  saved model + pairs -> ``concepts.csv``
``clvq evaluate``  concept-removal score of saved models
``clvq table``     the paper's comparison table
``clvq demo``      the main job (:func:`clvqlearn.cli.demo.run_demo`)

Every subcommand also reads its options from a YAML/JSON file
(``--config``), and every run writes the options it used to
``config.yaml`` next to its outputs.
"""

from ._main import build_parser, main, parse_options

__all__ = ["build_parser", "main", "parse_options"]
