-- ms.lua (included, not a script; before order and submitted, which use it): times in ms given as
-- text, as numbers. tonumber() of a 13-digit text runs a full strtod (multi-precision digits:
-- with the other number parsing, about 2% of the server's main thread in the flood, perf). The
-- texts of a batch mostly repeat (one ingest batch's c, one claim's creation time), and Lua
-- compares strings by reference, so the last text is kept converted.
local ms_text, ms_value
local function ms_number(text)
  if text ~= ms_text then
    ms_text, ms_value = text, tonumber(text)
  end
  return ms_value
end
