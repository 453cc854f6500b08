"""Wrong submissions for Lab 2: realistic mistakes, and the test cells each one must fail.

As for Lab 1: ``MISTAKES`` holds one mistake per entry, written as an edit of the solution's answer cell (so
the fixtures follow the solution), with the test cells that must catch it. ``WRONG`` combines mistakes in
*different* answer cells into a few submissions (each costs an autograde kernel), which also shows that
parts are graded independently: ``tests/test_grading.py`` checks that each submission loses exactly the
points of the cells in ``fails`` and keeps all others. ``tests/test_lab2_references.py`` checks every
mistake on its own, in-process.
"""

from __future__ import annotations

from pathlib import Path

from coursekit import grading

LAB = "lab2_fine_tuning"
SOLUTION = grading.answers_from_solution(Path(__file__).resolve().parents[2] / "solutions" / LAB / f"{LAB}.py")


def edit(grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    """The solution's answer cell ``grade_id`` with lines replaced (see ``grading.edit_answer``)."""
    return grading.edit_answer(SOLUTION, grade_id, *replacements)


LORA_TESTS = {"lora_layer_test", "lora_training_test"}
PROMPT_TESTS = {"soft_prompt_test", "soft_prompt_mask_test"}

MISTAKES = {
    # Part 1: the LoRA layer
    "lora_B_random": {  # B keeps nn.Linear's random init: the model starts damaged
        "answers": edit("lora_answer", ("nn.init.zeros_(self.lora_B.weight)", "pass")),
        "fails": LORA_TESTS,
    },
    "lora_scaling_inverted": {  # r / alpha instead of alpha / r
        "answers": edit("lora_answer", ("self.scaling = alpha / r", "self.scaling = r / alpha")),
        "fails": {"lora_layer_test"},
    },
    "lora_base_trainable": {  # the base layer is never frozen: gradients reach the pretrained weights
        "answers": edit("lora_answer", ("for p in self.base.parameters():", "for p in []:")),
        "fails": {"lora_training_test"},
    },
    "lora_dropout_on_update": {  # dropout zeroes single outputs of the update instead of inputs
        "answers": edit("lora_answer", ("return out + self.lora_B(",
                                        "return out + self.lora_dropout(self.lora_B(self.lora_A(x))) * self.scaling")),
        "fails": {"lora_training_test"},
    },
    "lora_ignores_merged": {  # after a merge the update is counted twice
        "answers": edit("lora_answer", ("if self.merged:", "if False:")),
        "fails": {"lora_layer_test"},
    },
    # Part 2: injection
    "inject_substring_match": {  # "proj" in "out_proj": the wrong layers are adapted
        "answers": edit("inject_answer", ("if isinstance(module, nn.Linear) and name.split",
                                          "if isinstance(module, nn.Linear) and any(t in name for t in target_modules)]")),
        "fails": {"inject_test"},
    },
    "inject_freezes_the_adapters": {  # freezing after wrapping freezes lora_A and lora_B too
        "answers": edit("inject_answer", ("for p in model.parameters():", "for p in []:"),
                        ("return [name for name", "for p in model.parameters():\n    p.requires_grad_(False)\n"
                                                  "return [name for name, _ in chosen]")),
        "fails": {"inject_test"},
    },
    "inject_leaves_the_rest_trainable": {  # embeddings, norms, other linears and the head still train
        "answers": edit("inject_answer", ("for p in model.parameters():", "for p in []:")),
        "fails": {"inject_test"},
    },
    # Part 3: counting
    "count_state_dict": {  # the tied embedding/head is counted twice
        "answers": edit("count_answer", ("total = ", "total = sum(t.numel() for t in model.state_dict().values())")),
        "fails": {"count_test"},
    },
    # Part 4: merging
    "merge_without_scaling": {
        "answers": edit("merge_answer", ("m.base.weight += m.scaling", "m.base.weight += m.lora_B.weight @ m.lora_A.weight")),
        "fails": {"merge_test"},
    },
    "merge_twice": {  # merged layers are merged again
        "answers": edit("merge_answer", ("if isinstance(m, LoRALinear) and not m.merged:", "if isinstance(m, LoRALinear):")),
        "fails": {"merge_test"},
    },
    "merge_flag_not_set": {  # the weight holds the update and the forward adds it again
        "answers": edit("merge_answer", ("m.merged = True", "pass")),
        "fails": {"merge_test"},
    },
    "unmerge_adds": {
        "answers": edit("merge_answer", ("m.base.weight -= m.scaling",
                                         "m.base.weight += m.scaling * (m.lora_B.weight @ m.lora_A.weight)")),
        "fails": {"merge_test"},
    },
    # Part 5: the soft prompt
    "prompt_appended": {  # virtual tokens after the input: the mask no longer lines up either
        "answers": edit("soft_prompt_answer", ("embeds = torch.cat([prompt, inputs_embeds]",
                                               "embeds = torch.cat([inputs_embeds, prompt], dim=1)")),
        "fails": PROMPT_TESTS,
    },
    "prompt_masked_out": {  # zeros for the virtual tokens: the model is told to ignore them
        "answers": edit("soft_prompt_answer", ("attention_mask = torch.cat([attention_mask.new_ones",
                                               "attention_mask = torch.cat([attention_mask.new_zeros(B, P), attention_mask], dim=1)")),
        "fails": {"soft_prompt_mask_test"},
    },
    "prompt_shares_init": {  # training the prompt would change the tensor it started from
        "answers": edit("soft_prompt_answer", ("self.weight = nn.Parameter(init", "self.weight = nn.Parameter(init)")),
        "fails": {"soft_prompt_test"},
    },
    # Part 6: loss masking and batches
    "labels_not_masked": {  # the loss also trains the model to write prompts
        "answers": edit("example_answer", ("labels = [-100] * len(prompt_ids)", "labels = list(input_ids)")),
        "fails": {"example_test"},
    },
    "labels_shifted_by_hand": {  # Hugging Face shifts again: the model learns to predict two tokens ahead
        "answers": edit("example_answer", ("labels = [-100] * len(prompt_ids)",
                                           "labels = [-100] * (len(prompt_ids) - 1) + list(completion_ids) + [eos_id, -100]")),
        "fails": {"example_test"},
    },
    "eos_not_learned": {  # the model never learns to stop
        "answers": edit("example_answer", ("labels = [-100] * len(prompt_ids)",
                                           "labels = [-100] * len(prompt_ids) + list(completion_ids) + [-100]")),
        "fails": {"example_test"},
    },
    "labels_padded_with_pad_id": {  # padding counts in the loss
        "answers": edit("collate_answer", ("labels = torch.full((B, T), -100", "labels = torch.full((B, T), pad_id, dtype=torch.long)")),
        "fails": {"collate_test"},
    },
    "left_padding": {
        "answers": edit("collate_answer", ("input_ids[i, :n]", "input_ids[i, T - n:] = torch.tensor(e[\"input_ids\"])"),
                        ("attention_mask[i, :n]", "attention_mask[i, T - n:] = 1"),
                        ("labels[i, :n]", "labels[i, T - n:] = torch.tensor(e[\"labels\"])")),
        "fails": {"collate_test"},
    },
    # Part 7: augmentation
    "deletion_can_delete_everything": {
        "answers": edit("deletion_answer", ('return " ".join(kept) if kept', 'return " ".join(kept)')),
        "fails": {"deletion_test"},
    },
    "deletion_global_random": {  # not reproducible from the seed
        "answers": edit("deletion_answer", ("rng.random() >= p", "kept = [w for w in words if random.random() >= p]")),
        "fails": {"deletion_test"},
    },
    "swap_neighbours_only": {
        "answers": edit("swap_answer", ("i, j = rng.sample", "i = rng.randrange(len(words) - 1)\nj = i + 1")),
        "fails": {"swap_test"},
    },
    "swap_same_position": {  # two independent draws: sometimes a word is "swapped" with itself
        "answers": edit("swap_answer", ("i, j = rng.sample", "i, j = rng.randrange(len(words)), rng.randrange(len(words))")),
        "fails": {"swap_test"},
    },
}



SUBMISSIONS = [  # every mistake appears exactly once
    ("lora_B_random",),  # alone: injection and merging must not pay for it
    ("lora_scaling_inverted", "inject_substring_match", "merge_without_scaling", "prompt_appended",
     "labels_not_masked", "labels_padded_with_pad_id", "deletion_can_delete_everything"),
    ("lora_base_trainable", "inject_freezes_the_adapters", "merge_twice", "prompt_masked_out",
     "labels_shifted_by_hand", "left_padding", "swap_neighbours_only"),
    ("lora_dropout_on_update", "inject_leaves_the_rest_trainable", "merge_flag_not_set", "prompt_shares_init",
     "eos_not_learned", "deletion_global_random", "swap_same_position"),
    ("lora_ignores_merged", "count_state_dict", "unmerge_adds"),
]
WRONG = grading.combine_mistakes(MISTAKES, SUBMISSIONS)
