"""Model I/O shared by every layer above ``memory``: tokenisation and chat formatting, padded
batches, the final hidden states that predict a response, the head, the masked next-token loss
and the teacher-forced log-probability of gold answers. ``train``, ``sleep`` and ``tasks`` import
these instead of each other."""

from sleepcore.lm.answers import answer_ids, answer_text, gold_logprobs, qa_examples
from sleepcore.lm.chat import ANSWER_TOKENS, SHORT_ANSWER, chat_turn, end_of_turn, qa_prompt
from sleepcore.lm.hidden import final_hidden, padded_batch, response_hidden, response_rows
from sleepcore.lm.next_token import IGNORE_INDEX, next_token_loss, next_token_sum, as_examples
from sleepcore.lm.tokens import encode, head_weight, newline_ids, pad_id
from sleepcore.lm.tree import Branch, TreeBatch, tree_attention_mask, tree_batch
from sleepcore.rollout.model_runner import attention_implementation

__all__ = ["answer_ids", "answer_text", "gold_logprobs", "qa_examples", "ANSWER_TOKENS", "SHORT_ANSWER", "chat_turn",
           "end_of_turn", "qa_prompt", "attention_implementation", "final_hidden", "padded_batch", "response_hidden",
           "response_rows", "IGNORE_INDEX", "next_token_loss", "next_token_sum", "as_examples", "encode",
           "head_weight", "newline_ids", "pad_id", "Branch", "TreeBatch", "tree_attention_mask", "tree_batch"]
