"""nbgrader configuration and the ``python -m autograder`` command line for the course."""
