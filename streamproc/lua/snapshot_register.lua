-- snapshot_register.lua: add a written file to the snapshot manifest, ack the facts-stream
-- entries it holds and record that its completions are to be added to the leaderboards, in one
-- step, so each fact is in exactly one registered file and the boards count exactly the
-- registered completions. The rows are then added a chunk at a time (lb_apply.lua), each chunk
-- its own short step: a whole file's in this one would hold the server for tens of ms.
-- Fence: every entry must still be pending in the group, whichever consumer holds it now. Should
-- any of them be acked already (another consumer took them over while this one was paused, and
-- registered them first), nothing is registered or acked and the caller drops its file; the
-- entries still pending stay with it to be written again. The check reads the group's pending
-- list (XPENDING over the ids' range, 1,000 ids at a time), which writes nothing: claiming the
-- entries first (XCLAIM JUSTID, as this script did) decided the same, but the server writes each
-- claim to the AOF, one command per fact, about a microsecond of its time per order for entries
-- acked in the same step anyway. Should the list not show every id (a range more crowded than
-- XPENDING was asked for, ids out of order, a conflict), the claim decides, as before.
-- Held: while a leaderboard rebuild runs, nothing is registered (its source must stay fixed).
-- KEYS[1] facts stream  KEYS[2] manifest hash  KEYS[3] manifest version  KEYS[4] KPI cache
-- KEYS[5] leaderboard rebuild marker  KEYS[6] leaderboard pending hash (keys.leaderboard_pending)
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] file name  ARGV[4] file info (JSON)
-- ARGV[5] the file's pending record, `0|<chunks>|<rows per chunk>|<ms>|<seqs>` ("" when no
-- completion of it is to be counted)  ARGV[6..] ids, in stream order (the range of each 1,000 is
-- read from its first and last)
-- Returns "ok" (version in the second element), "held" or "conflict".
if redis.call("HEXISTS", KEYS[2], ARGV[3]) == 1 then
  -- A retry after a lost reply: this very file is registered already.
  return { "ok", tonumber(redis.call("GET", KEYS[3]) or "0") }
end
if redis.call("EXISTS", KEYS[5]) == 1 then
  return { "held", 0 }
end
local ids = {}
for i = 6, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
-- Whether ids[from..to] are all pending: listed, or else claimed (a crowded range, ids out of
-- order, or a conflict, which the claim then confirms).
local READ = 4000
local function pending(from, to)
  local listed = redis.call("XPENDING", KEYS[1], ARGV[1], ids[from], ids[to], READ)
  if #listed < READ then
    local found = {}
    for _, entry in ipairs(listed) do
      found[entry[1]] = true
    end
    local all = true
    for j = from, to do
      if not found[ids[j]] then
        all = false
        break
      end
    end
    if all then
      return true
    end
  end
  local args = { KEYS[1], ARGV[1], ARGV[2], 0 }
  for j = from, to do
    args[#args + 1] = ids[j]
  end
  args[#args + 1] = "JUSTID"
  return #redis.call("XCLAIM", unpack(args)) == to - from + 1
end
for i = 1, #ids, 1000 do
  if not pending(i, math.min(i + 999, #ids)) then
    return { "conflict", 0 }
  end
end
for i = 1, #ids, 1000 do
  redis.call("XACK", KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 999, #ids)))
end
redis.call("HSET", KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= "" then
  redis.call("HSET", KEYS[6], ARGV[3], ARGV[5])
end
redis.call("DEL", KEYS[4])
return { "ok", redis.call("INCR", KEYS[3]) }
