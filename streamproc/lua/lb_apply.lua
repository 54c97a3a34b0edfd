-- lb_apply.lua: add one chunk of a registered file's board rows to the live leaderboards.
-- A file's rows (analytics/boardsums.py, in a fixed order) are added a chunk at a time, each its
-- own short step, so that no single step holds the server for a whole file. The file's record
-- in the pending hash (snapshot_register.lua writes it) says how many chunks are in: a chunk is
-- added only when it is the next one, so a chunk sent twice (a retry, or two consumers finishing
-- the same file after one stalled) is added once; the last one drops the record. A rebuild's swap
-- drops every record (its boards hold those files whole): the remaining chunks are then "gone".
-- KEYS[1] pending hash  KEYS[2] leaderboard currencies set
-- ARGV[1] file name  ARGV[2] chunk number (1-based)  ARGV[3] now (ms)  ARGV[4] leaderboard key
-- prefix  then the chunk's rows, 9 values each (lib/leaderboard.lua's lb_add_rows)
-- Returns {"ok"} (added; a board that cannot be written, a key of the wrong type, gives the error
-- as the second element: the chunk counts as added all the same), {"gone"} (no record), or
-- {"taken", chunks added} when this chunk is not the next one.
-- include: leaderboard
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then
  return { "gone" }
end
-- `<chunks added>|<chunks>|<rows per chunk>|<ms>|<seqs>` (keys.leaderboard_pending)
local applied, chunks, rows, _, seqs = string.match(record, "^(%d+)|(%d+)|(%d+)|(%d+)|(.*)$")
applied, chunks = tonumber(applied), tonumber(chunks)
local chunk = tonumber(ARGV[2])
if chunk ~= applied + 1 then
  return { "taken", applied }
end
-- pcall: a board that cannot be written must not stall the file's other chunks for ever.
local written, err = pcall(function()
  local batch = lb_batch(ARGV[4], KEYS[2])
  lb_add_rows(batch, 5)
  lb_flush(batch)
end)
if chunk >= chunks then
  redis.call("HDEL", KEYS[1], ARGV[1])
else
  redis.call("HSET", KEYS[1], ARGV[1], chunk .. "|" .. chunks .. "|" .. rows .. "|" .. ARGV[3]
    .. "|" .. seqs)
end
if not written then
  return { "ok", tostring(err) }
end
return { "ok" }
