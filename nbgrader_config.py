"""nbgrader's own tools on this repository: the formgrader (`jupyter lab` started here) and `nbgrader ...` run here.

    notebooks/<id>/<id>.ipynb            source notebooks (the course's source of truth)
    release/<id>/                        generate_assignment: the student notebook, helpers/, minirlhf/ of the
                                         earlier notebooks, artifacts/ (the same folder `python -m autograder release` writes)
    exchange/<course id>/                release_assignment, collect, release_feedback ($RLHF_EXCHANGE moves it)
    submitted/<student>/<id>/            collect
    autograded/<student>/<id>/           autograde (helpers/, minirlhf/, artifacts/ restored from the instructor's copy)
    feedback/<student>/<id>/<id>.html    generate_feedback
    gradebook.db

The settings live in autograder/nbgrader_course.py (folders, course id, exchange, the preprocessors that
put helpers/, minirlhf/ and artifacts/ beside a notebook) and autograder/course.py (the stub text and
ignored files, shared with `python -m autograder release/grade`).
"""

import os
import sys

_root = os.path.dirname(os.path.abspath(__file__))
if _root not in sys.path:
    sys.path.insert(0, _root)

from autograder.nbgrader_course import configure  # noqa: E402

configure(get_config(), _root)  # noqa: F821
