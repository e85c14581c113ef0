#!/usr/bin/env python3
"""Synthetic instruction tasks with short, checkable answers (messages-format JSONL).

Each line is {"messages": [{"role": "user", "content": PROMPT},
                           {"role": "assistant", "content": ANSWER}]}
where PROMPT ends with a fixed instruction ("Answer with just the number." / "Answer with just the
list.") so that ANSWER is the only correct reply and exact match can grade a generation.

Families (--families, --mix):
  add      two 2-digit numbers:             "What is 47 + 86? ..."             -> "133"
  sub      a - b with a >= b:               "What is 92 - 79? ..."             -> "13"
  sort     3-4 distinct numbers 0-99:       "Sort these numbers in ascending order: 12, 3, 7. ..."
                                                                               -> "3, 7, 12"
  count    a letter in an English word, the answers 0, 1, 2 and 3 equally often:
                                            "How many times does the letter 'r' appear in the
                                             word 'strawberry'? ..."           -> "3"
  convert  km->m, kg->g, m->cm and back, integer results:
                                            "Convert 7 km to meters. ..."      -> "7000"
  compare  the larger of two distinct numbers: "Which is larger: 347 or 92? ..." -> "347"

Deterministic: the same arguments give byte-identical files (Python's random.Random with an
integer seed; only randrange/choice/shuffle, whose algorithms are stable across versions).
Prompts are unique within each file and the eval file shares no prompt with the train file.
Every example is re-solved from its prompt text before writing (solve()).

  python3 data/bundled/make_tasks.py                     # the committed files
  python3 data/bundled/make_tasks.py --train 8000 --eval 400 --mix add=2,sort=1 --out-dir /tmp/t
"""

import argparse
import json
import os
import random
import re
import sys

NUMBER = "Answer with just the number."
LIST = "Answer with just the list."

FAMILIES = ("add", "sub", "sort", "count", "convert", "compare")

# Common English words of 3-11 letters, lower case, for the letter-counting family.
WORDS = """
apple banana cherry strawberry blueberry raspberry orange lemon melon grape peach pear
mississippi tennessee banana bookkeeper committee balloon coffee letter little bottle
hello world python program computer keyboard monitor mouse window garden flower summer winter
autumn spring river mountain valley forest desert island ocean planet rocket station engine
bicycle elephant giraffe kangaroo penguin dolphin octopus butterfly grasshopper caterpillar
chocolate vanilla caramel cinnamon pepper tomato potato carrot broccoli cucumber avocado
pineapple coconut watermelon mango papaya kiwi apricot lettuce spinach onion garlic
teacher student school library pencil notebook paper scissors eraser marker calendar
morning evening midnight yesterday tomorrow holiday weekend birthday celebration balloon
happiness kindness patience success address accommodate occasion necessary embarrass
parallel possess recommend occurrence millennium questionnaire referee assessment
beginning excellent difference tattoo puzzle jazz pizza bubble giggle sizzle zigzag
statistics assistant business processor session mission passenger classroom grammar
banner dinner hammer ladder mirror pepper summer supper zipper rubber cotton button
bamboo cookie igloo kangaroo shampoo voodoo noodle poodle doodle balloon raccoon
internet network software hardware database variable function parameter iteration
triangle rectangle square circle pentagon hexagon cylinder sphere pyramid diameter
""".split()
WORDS = sorted(set(WORDS))

CONVERSIONS = [
    # (from unit, to unit, factor, direction) with "up": n * factor, "down": n / factor
    ("km", "meters", 1000, "up"),
    ("kilometers", "meters", 1000, "up"),
    ("kg", "grams", 1000, "up"),
    ("kilograms", "grams", 1000, "up"),
    ("meters", "centimeters", 100, "up"),
    ("meters", "kilometers", 1000, "down"),
    ("grams", "kilograms", 1000, "down"),
    ("centimeters", "meters", 100, "down"),
]


def fmt_list(xs):
    return ", ".join(str(x) for x in xs)


def two_or_three_digits(rng):
    return rng.randrange(10, 1000)


def two_digits(rng):
    return rng.randrange(10, 100)


# Operands of the arithmetic families: a 135M model learns 2-digit sums from a few hundred
# examples but barely moves on 3-digit ones within the default recipe's budget.
def make_add(rng):
    a, b = two_digits(rng), two_digits(rng)
    q = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
                    "What is the sum of {a} and {b}?"]).format(a=a, b=b)
    return f"{q} {NUMBER}", str(a + b)


def make_sub(rng):
    a, b = two_digits(rng), two_digits(rng)
    if a < b:
        a, b = b, a
    q = rng.choice(["What is {a} - {b}?", "Compute {a} - {b}.", "Subtract {b} from {a}.",
                    "What is {a} minus {b}?"]).format(a=a, b=b)
    return f"{q} {NUMBER}", str(a - b)


def make_sort(rng):
    # At most 4 numbers: a sorted list then fits in 16 generated tokens (digits are single tokens).
    k = rng.randrange(3, 5)
    xs = []
    while len(xs) < k:
        x = rng.randrange(0, 100)
        if x not in xs:
            xs.append(x)
    q = rng.choice(["Sort these numbers in ascending order: {xs}.",
                    "Sort from smallest to largest: {xs}.",
                    "Put these numbers in increasing order: {xs}."]).format(xs=fmt_list(xs))
    return f"{q} {LIST}", fmt_list(sorted(xs))


# (word, letter) pairs by how often the letter occurs (0-3): drawing the answer first keeps the
# answers balanced, so a model cannot score by always answering "1".
PAIRS_BY_COUNT = {n: [(w, c) for w in WORDS for c in "abcdefghijklmnopqrstuvwxyz"
                      if w.count(c) == n] for n in range(4)}


def make_count(rng):
    word, letter = rng.choice(PAIRS_BY_COUNT[rng.randrange(4)])
    q = rng.choice(["How many times does the letter '{c}' appear in the word '{w}'?",
                    "Count the letter '{c}' in the word '{w}'.",
                    "How many '{c}' letters are in '{w}'?"]).format(c=letter, w=word)
    return f"{q} {NUMBER}", str(word.count(letter))


def make_convert(rng):
    src, dst, factor, direction = rng.choice(CONVERSIONS)
    n = rng.randrange(1, 500) if factor == 1000 else rng.randrange(1, 100)
    value, answer = (n, n * factor) if direction == "up" else (n * factor, n)
    q = rng.choice(["Convert {v} {s} to {d}.", "How many {d} are in {v} {s}?",
                    "Express {v} {s} in {d}."]).format(v=value, s=src, d=dst)
    return f"{q} {NUMBER}", str(answer)


def make_compare(rng):
    a = two_or_three_digits(rng)
    if rng.randrange(2):
        b = a + rng.choice([-11, -10, -9, -1, 1, 9, 10, 11, 90, -90, 100, -100])
        if not 10 <= b <= 999:
            b = two_or_three_digits(rng)
    else:
        b = two_or_three_digits(rng)
    if a == b:
        b = a + 1 if a < 999 else a - 1
    q = rng.choice(["Which is larger: {a} or {b}?", "Which number is bigger, {a} or {b}?",
                    "What is the larger of {a} and {b}?"]).format(a=a, b=b)
    return f"{q} {NUMBER}", str(max(a, b))


MAKERS = {"add": make_add, "sub": make_sub, "sort": make_sort, "count": make_count,
          "convert": make_convert, "compare": make_compare}


def solve(prompt):
    """The answer recomputed from the prompt text alone (a check on the generator)."""
    nums = [int(x) for x in re.findall(r"\d+", prompt)]
    if prompt.endswith(LIST):
        return fmt_list(sorted(nums))
    m = re.search(r"letter '(.)' appear in the word '(\w+)'|letter '(.)' in the word '(\w+)'|"
                  r"many '(.)' letters are in '(\w+)'", prompt)
    if m:
        letter, word = [x for x in m.groups() if x is not None]
        return str(word.count(letter))
    m = re.search(r"Convert (\d+) (\w+) to (\w+)\.|Express (\d+) (\w+) in (\w+)\.", prompt)
    if m:
        value, src, dst = [x for x in m.groups() if x is not None]
    else:
        m = re.search(r"How many (\w+) are in (\d+) (\w+)\?", prompt)
        if m:
            dst, value, src = m.groups()
    if m:
        for s, d, factor, direction in CONVERSIONS:
            if (s, d) == (src, dst):
                return str(int(value) * factor if direction == "up" else int(value) // factor)
        raise ValueError(f"unknown conversion: {prompt}")
    if "larger" in prompt or "bigger" in prompt:
        return str(max(nums))
    if "+" in prompt or "sum" in prompt or prompt.startswith("Add"):
        return str(nums[0] + nums[1])
    if "Subtract" in prompt:
        return str(nums[1] - nums[0])
    if "-" in prompt or "minus" in prompt:
        return str(nums[0] - nums[1])
    raise ValueError(f"cannot solve: {prompt}")


def parse_mix(text, families):
    weights = {f: 1.0 for f in families}
    if text:
        for item in text.split(","):
            name, _, w = item.partition("=")
            name = name.strip()
            if name not in families:
                sys.exit(f"--mix: '{name}' is not among the families {', '.join(families)}")
            try:
                weights[name] = float(w)
            except ValueError:
                sys.exit(f"--mix: bad weight in '{item}' (expected name=number)")
            if weights[name] < 0:
                sys.exit(f"--mix: negative weight for '{name}'")
    if sum(weights.values()) <= 0:
        sys.exit("--mix: all weights are zero")
    return weights


def allocate(total, weights):
    """Counts per family proportional to the weights, summing to total (largest remainder)."""
    s = sum(weights.values())
    exact = {f: total * w / s for f, w in weights.items()}
    counts = {f: int(v) for f, v in exact.items()}
    rest = total - sum(counts.values())
    for f in sorted(weights, key=lambda f: (-(exact[f] - counts[f]), f))[:rest]:
        counts[f] += 1
    return counts


def generate(count, seed, weights, exclude):
    rng = random.Random(seed)
    counts = allocate(count, weights)
    seen = set(exclude)
    examples = []
    for family in sorted(counts):  # fixed order, then one shuffle
        made, attempts = 0, 0
        while made < counts[family]:
            attempts += 1
            if attempts > 200 * counts[family] + 1000:
                sys.exit(f"family '{family}': cannot find {counts[family]} distinct prompts "
                         f"(found {made}); lower its share")
            prompt, answer = MAKERS[family](rng)
            if prompt in seen:
                continue
            if solve(prompt) != answer:
                sys.exit(f"generator bug: {prompt!r} -> {answer!r}, solver says {solve(prompt)!r}")
            seen.add(prompt)
            examples.append((family, prompt, answer))
            made += 1
    rng.shuffle(examples)
    return examples


def write_jsonl(path, examples):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for _, prompt, answer in examples:
            record = {"messages": [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer}]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description="Synthetic instruction tasks with checkable answers.")
    p.add_argument("--train", type=int, default=4000, help="training examples (default 4000)")
    p.add_argument("--eval", type=int, default=200, help="held-out examples (default 200)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the training set")
    p.add_argument("--eval-seed", type=int, default=5678, help="seed of the held-out set")
    p.add_argument("--families", default=",".join(FAMILIES),
                   help=f"comma-separated subset of {','.join(FAMILIES)}")
    p.add_argument("--mix", default="", help="relative weights, e.g. add=2,sort=1 (default: equal)")
    p.add_argument("--out-dir", default=here, help="folder for the two files (default: this one)")
    p.add_argument("--train-name", default="tasks_train.jsonl")
    p.add_argument("--eval-name", default="tasks_eval.jsonl")
    args = p.parse_args()

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    for f in families:
        if f not in FAMILIES:
            sys.exit(f"--families: unknown family '{f}' (known: {', '.join(FAMILIES)})")
    if args.train < 0 or args.eval < 0:
        sys.exit("--train and --eval must be >= 0")
    weights = parse_mix(args.mix, families)

    train = generate(args.train, args.seed, weights, exclude=())
    held_out = generate(args.eval, args.eval_seed, weights, exclude={p for _, p, _ in train})
    assert not {p for _, p, _ in train} & {p for _, p, _ in held_out}

    os.makedirs(args.out_dir, exist_ok=True)
    write_jsonl(os.path.join(args.out_dir, args.train_name), train)
    write_jsonl(os.path.join(args.out_dir, args.eval_name), held_out)
    for name, examples in (("train", train), ("eval", held_out)):
        per = {f: 0 for f in families}
        for family, _, _ in examples:
            per[family] += 1
        print(f"{name}: {len(examples)} examples (" +
              ", ".join(f"{f} {n}" for f, n in per.items()) + ")")


if __name__ == "__main__":
    main()
