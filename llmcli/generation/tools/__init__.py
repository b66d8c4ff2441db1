"""Tool calls: OpenAI's function tools through a model's own chat template, and the model's reply
read back into content and calls.

* `spec` — the request's `tools` and `tool_choice` checked, and `ToolCall` (OpenAI's shape);
* `formats` — the table of model families' call formats (Hermes for Qwen, Llama 3.x, Mistral, and a
  generic JSON format for templates without tool support): detection, reading, writing;
* `reader` — `ReplyReader`: content and calls out of a reply as it streams (or whole); an enforced
  reply's calls announced (`CallHead`) and their arguments handed over as they come (`ArgumentsPart`);
* `grammar` — the GBNF a reply must follow when calls are required;
* `chat` — `ToolChat.prepare(template, messages, tools, tool_choice)`: the prompt, the grammar, the reader.
"""

from .chat import TemplateCaps, ToolChat, template_caps, template_messages, tool_instruction
from .formats import FORMATS, GENERIC, HERMES, LLAMA3, MISTRAL, CallLayout, ToolFormat, detect_format
from .grammar import rename_rules, tool_call_grammar
from .reader import ArgumentsPart, CallHead, ReplyReader
from .spec import Tool, ToolCall, ToolChoice, parse_tool_choice, parse_tools

__all__ = ["FORMATS", "GENERIC", "HERMES", "LLAMA3", "MISTRAL", "ArgumentsPart", "CallHead", "CallLayout",
           "ReplyReader", "TemplateCaps", "Tool", "ToolCall",
           "ToolChat", "ToolChoice", "ToolFormat", "detect_format", "parse_tool_choice", "parse_tools",
           "rename_rules", "template_caps", "template_messages", "tool_call_grammar", "tool_instruction"]
