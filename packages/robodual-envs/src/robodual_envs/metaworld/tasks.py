"""Meta-World task names, task-list parsing and natural-language instructions.

Meta-World has no language: every task gets several hand-written paraphrases (all MT10 tasks and most
others), and tasks without templates get generic ones built from the task name. The paraphrase of an
episode is chosen deterministically from its seed.
"""

from __future__ import annotations

import hashlib

from robodual_core.errors import RobodualError

# The MT10 benchmark's tasks, in metaworld.MT10().train_classes order.
MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "reach-v3": (
        "reach the red target",
        "move the gripper to the goal position",
        "reach toward the target point",
        "bring the end effector to the marked goal",
        "go to the target location",
    ),
    "push-v3": (
        "push the puck to the goal",
        "slide the puck over to the target",
        "push the red puck to the marked spot",
        "move the puck to the goal by pushing it",
        "shove the puck onto the target position",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "grasp the puck and put it on the target",
        "lift the red puck and move it to the goal position",
        "pick the puck and drop it at the marked spot",
        "take the puck and place it at the target",
    ),
    "door-open-v3": (
        "open the door",
        "pull the door open",
        "swing the door open by its handle",
        "grab the door handle and open the door",
        "open the cabinet door",
    ),
    "drawer-open-v3": (
        "open the drawer",
        "pull the drawer open",
        "grab the drawer handle and pull it out",
        "slide the drawer out",
        "pull out the drawer",
    ),
    "drawer-close-v3": (
        "close the drawer",
        "push the drawer shut",
        "slide the drawer closed",
        "push the drawer back in",
        "shut the open drawer",
    ),
    "button-press-topdown-v3": (
        "press the button from the top",
        "push the button down",
        "press down on the red button",
        "push the button from above",
        "press the button on top of the box",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole",
        "put the peg in the hole from the side",
        "pick up the peg and insert it sideways into the box",
        "slide the peg into the side hole",
        "grasp the peg and push it into the hole",
    ),
    "window-open-v3": (
        "open the window",
        "slide the window open",
        "push the window handle to open the window",
        "slide the window to the open position",
        "open the sliding window",
    ),
    "window-close-v3": (
        "close the window",
        "slide the window shut",
        "push the window handle to close the window",
        "slide the window to the closed position",
        "shut the sliding window",
    ),
    "button-press-v3": (
        "press the button",
        "push the button forward",
        "press the red button on the front of the box",
        "push the button in",
    ),
    "button-press-wall-v3": (
        "press the button behind the wall",
        "reach around the wall and press the button",
        "push the button next to the wall",
    ),
    "button-press-topdown-wall-v3": (
        "press the button from the top next to the wall",
        "push the button down beside the wall",
        "press down on the button near the wall",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine button",
        "start the coffee machine by pressing its button",
    ),
    "coffee-pull-v3": (
        "pull the mug away from the coffee machine",
        "take the mug out of the coffee machine",
        "drag the cup back from the coffee machine",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the mug into the coffee machine",
        "move the cup under the coffee spout",
    ),
    "dial-turn-v3": ("turn the dial", "rotate the dial", "spin the knob around"),
    "door-close-v3": ("close the door", "push the door shut", "swing the door closed"),
    "door-lock-v3": ("lock the door", "turn the door lock", "rotate the lock to lock the door"),
    "door-unlock-v3": ("unlock the door", "turn the lock to unlock the door", "open the door lock"),
    "faucet-open-v3": ("turn the faucet on", "open the faucet", "rotate the faucet handle to open it"),
    "faucet-close-v3": ("turn the faucet off", "close the faucet", "rotate the faucet handle to close it"),
    "hammer-v3": ("hammer the nail in", "pick up the hammer and drive in the nail", "use the hammer on the nail"),
    "handle-press-v3": ("press the handle down", "push the handle down", "press down on the lever handle"),
    "handle-pull-v3": ("pull the handle up", "lift the handle", "pull up on the handle"),
    "lever-pull-v3": ("pull the lever", "pull the lever up", "raise the lever"),
    "pick-out-of-hole-v3": ("pick the puck out of the hole", "lift the puck out of the hole",
                            "take the puck out of the hole"),
    "pick-place-wall-v3": ("pick up the puck and place it behind the wall", "move the puck over the wall to the goal",
                           "lift the puck over the wall and put it at the target"),
    "plate-slide-v3": ("slide the plate into the goal", "push the plate into the net", "slide the plate forward"),
    "push-back-v3": ("push the puck back to the goal", "pull the puck back to the target",
                     "move the puck backward to the goal"),
    "push-wall-v3": ("push the puck around the wall to the goal", "slide the puck past the wall to the target",
                     "push the puck to the goal behind the wall"),
    "reach-wall-v3": ("reach the target behind the wall", "move the gripper over the wall to the goal",
                      "reach past the wall to the target"),
    "shelf-place-v3": ("place the puck on the shelf", "put the puck onto the shelf", "pick up the puck and shelve it"),
    "sweep-v3": ("sweep the puck off the table", "push the puck off the edge of the table",
                 "sweep the puck to the side"),
    "sweep-into-v3": ("sweep the puck into the hole", "push the puck into the hole", "slide the puck into the hole"),
    "basketball-v3": ("put the ball into the hoop", "dunk the basketball", "pick up the ball and drop it in the hoop"),
    "soccer-v3": ("kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball"),
    "assembly-v3": ("put the ring on the peg", "place the nut onto the peg", "assemble the ring onto the peg"),
    "disassemble-v3": ("take the ring off the peg", "remove the nut from the peg", "lift the ring off the peg"),
    "stick-push-v3": ("use the stick to push the thermos", "grab the stick and push the bottle with it",
                      "push the thermos with the stick"),
    "stick-pull-v3": ("use the stick to pull the thermos", "grab the stick and pull the bottle with it",
                      "pull the thermos with the stick"),
    "bin-picking-v3": ("move the puck from one bin to the other", "pick the puck out of the bin and put it in the "
                       "other bin", "transfer the puck between the bins"),
    "box-close-v3": ("put the lid on the box", "close the box with its lid", "pick up the lid and cover the box"),
    "hand-insert-v3": ("put the puck into the hole in the table", "insert the puck into the hole", "slide the puck down into the hole "
                       "in the table"),
    "handle-press-side-v3": ("press the handle down from the side", "push the side handle down",
                             "press down on the handle from the side"),
    "handle-pull-side-v3": ("pull the handle up from the side", "lift the side handle", "pull up the handle sideways"),
    "peg-unplug-side-v3": ("unplug the peg", "pull the peg out of the hole", "take the peg out sideways"),
    "plate-slide-back-v3": ("slide the plate back into the goal", "pull the plate back into the net",
                            "slide the plate backward"),
    "plate-slide-side-v3": ("slide the plate sideways into the goal", "push the plate to the side into the net",
                            "slide the plate to the side"),
    "plate-slide-back-side-v3": ("slide the plate back sideways into the goal", "pull the plate sideways into the net",
                                 "slide the plate back and to the side"),
}

_GENERIC = ("{x}", "please {x}", "the robot should {x}", "{x} with the gripper")


def all_tasks() -> list[str]:
    """Every Meta-World task name (``reach-v3``, ...); imports metaworld."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def resolve_tasks(spec: str | list[str] | tuple[str, ...], flag: str = "--tasks") -> list[str]:
    """``"mt10"``, ``"mt50"`` or ``"reach-v3,push-v3"`` (or a list) -> validated task names, order kept, no
    duplicates."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    known: list[str] | None = None
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item.lower() == "mt10":
            expanded = list(MT10)
        elif item.lower() == "mt50":
            expanded = all_tasks()
        else:
            if known is None:
                known = all_tasks()
            name = item if item in known else f"{item}-v3"
            if name not in known:
                raise RobodualError(f"{flag}: unknown Meta-World task '{item}'; expected 'mt10', 'mt50' or task "
                                    f"names such as {', '.join(known[:4])}, ... (all: {', '.join(known)})")
            expanded = [name]
        names.extend(n for n in expanded if n not in names)
    if not names:
        raise RobodualError(f"{flag}: no task given; expected 'mt10' or a comma-separated list like 'reach-v3,push-v3'")
    return names


def instructions(task: str) -> tuple[str, ...]:
    """The paraphrases of ``task``: hand-written ones, or generic ones built from its name."""
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    phrase = task.removesuffix("-v3").replace("-", " ")
    return tuple(t.format(x=phrase) for t in _GENERIC)


def instruction_for(task: str, seed: int) -> str:
    """One paraphrase of ``task``, chosen deterministically (and independently of Python's hash seed)."""
    options = instructions(task)
    digest = hashlib.sha256(f"{task}:{seed}".encode()).digest()
    return options[int.from_bytes(digest[:8], "little") % len(options)]


def task_of_instruction(instruction: str) -> str | None:
    """The task whose paraphrase list holds ``instruction`` (used by the scripted-expert policy)."""
    for task, options in INSTRUCTIONS.items():
        if instruction in options:
            return task
    text = instruction.strip()
    for template in _GENERIC:
        head, _, tail = template.partition("{x}")
        if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
            candidate = text[len(head):len(text) - len(tail)].replace(" ", "-") + "-v3"
            if candidate in _all_tasks_cached():
                return candidate
    return None


_ALL: list[str] | None = None


def _all_tasks_cached() -> list[str]:
    global _ALL
    if _ALL is None:
        _ALL = all_tasks()
    return _ALL


def episode_seed(seed: int, task: str, index: int, salt: int = 0, attempt: int = 0) -> int:
    """A 31-bit seed for episode ``index`` of ``task`` that does not depend on task order or worker count.

    ``salt`` separates uses (0 = generation, 1 = evaluation) so evaluation placements differ from training
    ones; ``attempt`` gives a retried generation slot a new placement.
    """
    digest = hashlib.sha256(f"{seed}:{task}:{index}:{salt}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
