-- order.lua (included, not a script; after ms): the fields ingest.lua leaves out of a new
-- order's hash, and the history's format. A new hash holds only s, d and c; until its first
-- transition writes them, its attempt is 1, its next stage reserve and its history pending
-- since c.
-- The history is one step per state entered, oldest first: a one-letter code and the ms after c,
-- with no separator (`p0r1113a1186c1250`; `r-5` when another machine's clock runs behind). Only
-- codes are letters, so each letter starts a step. Without a numeric c a step holds absolute ms
-- instead: `c=1795655477408`. A finished one-line order's hash then takes 264 bytes instead of
-- 296 with `completed@+1250` steps (a smaller allocation), and 392 with absolute steps and field
-- u (the update time, which is the last step's time).
-- Hashes written before hold `state@+<ms after c>;…` or `state@<ms>;…`, which every reader still
-- takes. The first step appended to such a history recodes it whole (order_recode) rather than
-- adding a code step after a `;`: the script has the whole string anyway, the order shrinks too,
-- and the scripts never write a history of two formats (readers take one all the same).
local ORDER_CODES = { pending = "p", reserved = "r", paid = "a", completed = "c", failed = "f",
  rolled_back = "b", dead_lettered = "d" }

local function order_attempt(attempt)
  return attempt or "1"
end

-- Whether the order (its stored next stage and attempt) waits for `stage` in `attempt`.
local function order_awaits(next_stage, stored_attempt, stage, attempt)
  return (next_stage or "reserve") == stage and (stored_attempt or "1") == attempt
end

-- Whether the order was dead-lettered before: its next terminal state is not its first outcome.
-- Only as a code is `d` followed by a number (state names hold `d@`, `de`, `d_`).
local function order_was_dead_lettered(history)
  if not history then
    return false
  end
  return string.find(history, "d=?%-?%d") ~= nil
    or string.find(history, "dead_lettered@", 1, true) ~= nil
end

-- One step: `state` entered at `at` ms, relative to `since` (c) when that is a number.
local function order_step(state, at, since)
  if since then
    return ORDER_CODES[state] .. string.format("%d", at - since)
  end
  return ORDER_CODES[state] .. "=" .. string.format("%d", at)
end

-- A history with `state@t` parts, in codes. Malformed parts, which readers skip, and names that
-- were never states are dropped; a part without `@` is read as codes, and its steps are kept.
local function order_recode(history, since)
  local out = {}
  for part in string.gmatch(history, "[^;]+") do
    local state, plus, at = string.match(part, "^([^@]+)@(%+?)(%-?%d+)$")
    local code = state and ORDER_CODES[state]
    if not string.find(part, "@", 1, true) then
      for step in string.gmatch(part, "[a-z]=?%-?%d+") do
        out[#out + 1] = step
      end
    elseif code and plus == "+" then
      out[#out + 1] = code .. at
    elseif code and string.sub(at, 1, 1) ~= "-" then
      out[#out + 1] = order_step(state, tonumber(at), since)
    end
  end
  return table.concat(out)
end

-- The history (nil: pending since c) with `state` entered at `now` (ms, a number or its text)
-- appended.
local function order_advance(history, created, state, now)
  local since = ms_number(created)
  if not history then
    history = "p0"
  elseif string.find(history, "@", 1, true) then
    history = order_recode(history, since)
  end
  return history .. order_step(state, tonumber(now), since)
end
