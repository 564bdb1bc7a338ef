"""mmkd: distil many expert biomedical CLIP teachers into one student, from a feature store.

Stages (each a subpackage): ``extract`` (teachers -> store), ``store`` (the feature
store format), ``distill`` (store -> student), ``eval`` (student and teachers -> table).
Importing :mod:`mmkd` is cheap: heavy libraries load inside the functions that use them.
"""

__version__ = "0.1.0"
