"""Two-stage arithmetic with written-out intermediate steps.

Each problem knows its gold worked solution (`reasoning`), so the checker can tell which stage went
wrong and the oracle diagnostics can compare a trajectory's commitments with the gold.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from tie_lite.engine.answer import PAPER_ANSWER_MARKER

from .phrasing import SHIPPED_TEMPLATES, write_prompt

ANSWER_MARKER = PAPER_ANSWER_MARKER  # the layout the shipped members were trained on


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    reasoning: str  # gold worked solution, stages separated by ";"
    answer: str
    stages: tuple[str, ...] = field(default=())  # names of the stages this problem exercises


@dataclass(frozen=True)
class Check:
    correct: bool
    answer: str | None
    stages: dict[str, bool]  # stage name -> written step is right (given the values written before it)


_SUM = re.compile(r"^(\d+)\+(\d+)=(\d+)$")
_PRODUCT = re.compile(r"^(\d+)\*(\d+)=(\d+)\+(\d+)=(\d+)$")


def product_step(a: int, b: int) -> str:
    """a*b written out as tens and units: 64*7=420+28=448."""
    tens, units = (a - a % 10) * b, (a % 10) * b
    return f"{a}*{b}={tens}+{units}={a * b}"


def _equations(text: str) -> list[tuple[int, str, int, int, bool]]:
    """Steps of a worked solution as (left, op, right, value, written right)."""
    eqs = []
    for step in re.sub(r"\s", "", text).split(";"):
        if m := _SUM.match(step):
            a, b, c = map(int, m.groups())
            eqs.append((a, "+", b, c, a + b == c))
        elif m := _PRODUCT.match(step):
            a, b, x, y, c = map(int, m.groups())
            eqs.append((a, "*", b, c, step == product_step(a, b)))
    return eqs


def _holds(eq) -> bool:
    return eq[4]


def parse_answer(text: str) -> str | None:
    """The text after the last answer marker, stripped; None when there is no marker."""
    if ANSWER_MARKER not in text:
        return None
    return text.rsplit(ANSWER_MARKER, 1)[1].strip()


def addend(rng: random.Random, high: int, one_digit: float = 0.0) -> int:
    """A 2-digit operand of a sum, or with probability `one_digit` a 1-digit one (people ask "8 + 5" too; the
    shipped members' training mix has none, and with none the random stream is the same as without)."""
    if one_digit and rng.random() < one_digit:
        return rng.randint(1, 9)
    return rng.randint(10, high)


def small_sum(rng: random.Random, one_digit: float = 0.0) -> tuple[int, int]:
    """Two numbers below 90 (2-digit, or some 1-digit) with a 2-digit sum, so the product that follows is a
    2-digit number by a digit."""
    while True:
        a, b = addend(rng, 89, one_digit), addend(rng, 89, one_digit)
        if 10 <= a + b <= 99:
            return a, b


def small_product(rng: random.Random) -> tuple[int, int]:
    """A 2-digit number and a digit with a 2-digit product (uniform over such pairs), so that adding
    two products is a 2-digit addition: both tasks exercise the same two skills, in opposite orders."""
    while True:
        a, b = rng.randint(10, 49), rng.randint(2, 9)
        if a * b <= 99:
            return a, b


class ArithmeticTask:
    """Base: subclasses generate operands and write the worked solution.

    The skills are sized for members of a few hundred thousand parameters: sums of two 2-digit
    numbers and products of a 2-digit number by a digit (written as tens + units)."""

    name = ""
    product_stage = "product"  # the stage name of a plain product
    description = ""
    examples: tuple[str, ...] = ()
    def sample(self, rng: random.Random, mix: dict[str, float] | None = None, phrasing: str = "templates",
               words: random.Random | None = None) -> Problem:
        """A problem drawn with `rng`, asked in the phrasing set (tasks/phrasing.py); other sets than `templates`
        are written with `words` (default `rng`)."""
        raise NotImplementedError

    def generate(self, n: int, seed: int, mix: dict[str, float] | None = None, phrasing: str = "templates") -> list[Problem]:
        """n seeded problems; every phrasing set asks the same problems, only the wording differs."""
        rng, words = random.Random(seed), random.Random(f"phrasing-{seed}")
        return [self.sample(rng, mix, phrasing, words) for _ in range(n)]

    def _problem(self, rng, tokens, steps, answer, stages, phrasing, words) -> Problem:
        template = rng.choice(SHIPPED_TEMPLATES)  # drawn in every set: the problem stream stays the same
        if phrasing == "templates":
            prompt = template.format(e="".join(map(str, tokens)))
        else:
            prompt = write_prompt(tokens, words or rng, phrasing)
        return Problem(self.name, prompt, ";".join(steps), str(answer), stages)

    def _one_stage(self, rng, mix, phrasing, words) -> Problem:
        """A plain sum of two numbers below 100, or a plain product of a 2-digit number by a digit."""
        if rng.random() < mix.get("one_stage_sum", 0.5):
            a, b = addend(rng, 99, mix.get("one_digit", 0.0)), addend(rng, 99, mix.get("one_digit", 0.0))
            return self._problem(rng, [a, "+", b], [f"{a}+{b}={a + b}"], a + b, ("sum",), phrasing, words)
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return self._problem(rng, [a, "*", b], [product_step(a, b)], a * b, (self.product_stage,), phrasing, words)

    def check(self, problem: Problem, output: str) -> Check:
        answer = parse_answer(output)
        correct = answer is not None and re.fullmatch(r"-?\d+", answer) is not None and int(answer) == int(problem.answer)
        reasoning = output.split(ANSWER_MARKER, 1)[0]
        return Check(correct, answer, self.stage_results(problem, _equations(reasoning)))

    def stage_results(self, problem: Problem, eqs) -> dict[str, bool]:
        raise NotImplementedError


class SumThenProduct(ArithmeticTask):
    """(a+b)*c: the sum, then the product. One-stage cases: a+b and a*c."""

    name = "sum-product"
    description = "(a+b)*c with the sum and the product written out; plain sums and products too"
    examples = ("What is (23+41)*7?", "Compute (23+41)*7 step by step.", "What is 37+85?", "What is 64*7?")

    def sample(self, rng, mix=None, phrasing="templates", words=None):
        mix = mix or {}
        if rng.random() < mix.get("one_stage", 0.15):
            return self._one_stage(rng, mix, phrasing, words)
        (a, b), c = small_sum(rng, mix.get("one_digit", 0.0)), rng.randint(2, 9)
        r = rng.random()
        if r < mix.get("trivial_product", 0.0):
            c = 1
        elif r < mix.get("trivial_product", 0.0) + mix.get("trivial_sum", 0.0):
            a, b = rng.randint(20, 99), 0  # adding 0, over the range of the real sums
        s = a + b
        return self._problem(rng, ["(", a, "+", b, ")", "*", c], [f"{a}+{b}={s}", product_step(s, c)], s * c,
                             ("sum", "product"), phrasing, words)

    def stage_results(self, problem, eqs):
        gold = _equations(problem.reasoning)
        sums = [e for e in eqs if e[1] == "+"]
        prods = [e for e in eqs if e[1] == "*"]
        out = {}
        if "sum" in problem.stages:  # the gold sum, written right
            out["sum"] = bool(sums) and sums[0] == gold[0]
        if "product" in problem.stages:  # the written sum (right or not) times the gold factor, written right
            factor = gold[-1][2]
            out["product"] = bool(prods) and prods[0][2] == factor and _holds(prods[0])
            if "sum" in problem.stages:
                out["product"] = out["product"] and bool(sums) and prods[0][0] == sums[0][3]
            else:
                out["product"] = out["product"] and prods[0] == gold[-1]
        return out


class ProductsThenSum(ArithmeticTask):
    """a*b+c*d: both products, then their sum. One-stage cases: a*b and a+b."""

    name = "product-sum"
    product_stage = "products"
    description = "a*b+c*d with both products and the sum written out; plain products and sums too"
    examples = ("What is 23*4+17*5?", "Compute 23*4+17*5 step by step.", "What is 23*4?", "What is 92+85?")

    def sample(self, rng, mix=None, phrasing="templates", words=None):
        mix = mix or {}
        if rng.random() < mix.get("one_stage", 0.15):
            return self._one_stage(rng, mix, phrasing, words)
        (a, b), (c, d) = small_product(rng), small_product(rng)
        r = rng.random()
        if r < mix.get("trivial_product", 0.0):
            a, b, c, d = rng.randint(10, 99), 1, rng.randint(10, 99), 1  # by 1, over the range of the real products
        elif r < mix.get("trivial_product", 0.0) + mix.get("trivial_sum", 0.0):
            c = 0
        p, q = a * b, c * d
        steps = [product_step(a, b), product_step(c, d), f"{p}+{q}={p + q}"]
        return self._problem(rng, [a, "*", b, "+", c, "*", d], steps, p + q, ("products", "sum"), phrasing, words)

    def stage_results(self, problem, eqs):
        gold = _equations(problem.reasoning)
        sums = [e for e in eqs if e[1] == "+"]
        prods = [e for e in eqs if e[1] == "*"]
        out = {}
        if "products" in problem.stages:  # every gold product, written right
            want = [e for e in gold if e[1] == "*"]
            out["products"] = prods[: len(want)] == want
        if "sum" in problem.stages:  # the written products (right or not) added, written right
            ok = bool(sums) and _holds(sums[-1])
            if "products" in problem.stages:
                ok = ok and len(prods) >= 2 and (sums[-1][0], sums[-1][2]) == (prods[0][3], prods[1][3])
            else:
                ok = ok and sums[-1] == gold[-1]
            out["sum"] = ok
        return out


