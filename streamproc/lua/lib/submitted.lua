-- submitted.lua (included, not a script; after ms): how long an order has been in the
-- workflow, for the end-to-end latency metric of the process that commits its terminal state.
-- The clock starts at field c (ingest) for a first attempt, and at the last pending step of the
-- history for an order re-submitted by `ingest --force` (a later attempt): `p<ms after c>` or
-- `p=<ms>` (lib/order.lua), or, in a history written before the codes, `pending@+<ms after c>`
-- or `pending@<ms>`. -1 when unknown.
local function elapsed_ms(now, created, history, attempt)
  local since = ms_number(created)
  if attempt ~= "1" and history then
    -- Only as a code is `p` followed by a number; the later of the two forms, should both occur.
    local old, plus, old_ms = string.match(history, ".*()pending@(%+?)(%-?%d+)")
    local new, equals, new_ms = string.match(history, ".*()p(=?)(%-?%d+)")
    local relative, at = plus == "+", old_ms
    if new and (not old or new > old) then
      relative, at = equals == "", new_ms
    end
    if at and relative then
      since = since and since + tonumber(at)
    elseif at then
      since = tonumber(at)
    end
  end
  if not since then
    return -1
  end
  return now - since
end
