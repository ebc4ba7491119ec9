"""The ChatML chat template every MOAI tokenizer carries, with the special tokens (ids 0..6) of moai_llm.loading."""

from transformers import PreTrainedTokenizerFast

from ..loading import SPECIAL_TOKENS

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def wrap(tokenizer_object) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer with MOAI's special tokens and chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
