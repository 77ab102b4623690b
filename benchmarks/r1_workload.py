"""The R1 reference workload of ``BENCHMARKS.md``, built exactly as specified there.

scikit-learn's ``load_digits`` (1,797 images, 64 features / 16). A site is a 5-way task: 5 of the 10
classes drawn by the site's own seeded generator, relabelled 0..4 in the drawn order
(``data_adapters.digits.make_task_site``). 100 training sites from ``seed``; held-out evaluation on
fresh tasks from a SEPARATE ``test_seed``. Episodes: 5 shots + 15 query per class. Model: the digits
vertical's MLP 64-128-128-5.

By default every site draws from all 1,797 images, as the spec reads (held-out tasks are new class
subsets and label mappings). ``heldout_images=True`` instead uses the digits vertical's own federation,
whose test tasks draw only from images no training site saw (harder; reported as a second figure).
"""
from __future__ import annotations

from core.problem import SupervisedProblem
from core.tasks import Federation
from data_adapters.digits import DigitsData, build_digits_federation, load_digit_arrays, make_task_site
from verticals.digits import problem_for

TRAIN_SITES = 100
WAYS = 5


def r1_problem(seed: int = 0, test_tasks: int = 200, test_seed: int = 1, heldout_images: bool = False) -> SupervisedProblem:
    """The R1 problem: ``TRAIN_SITES`` training sites and ``test_tasks`` test sites."""
    cfg = DigitsData(ways=WAYS, train_sites=TRAIN_SITES, validation_sites=0, test_sites=test_tasks)
    if heldout_images:
        return problem_for(build_digits_federation(cfg, seed), cfg)
    x, y = load_digit_arrays()
    sites, roles = [], {"train": [], "test": []}
    for role, count, role_seed in (("train", TRAIN_SITES, seed), ("test", test_tasks, test_seed)):
        for i in range(count):
            sid = f"{role}-{i:03d}"
            sites.append(make_task_site(sid, x, y, WAYS, role_seed * 1_000_003 + i))
            roles[role].append(sid)
    return problem_for(Federation({s.site_id: s for s in sites}, roles), cfg)
