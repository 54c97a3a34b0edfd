-- tally.lua (included, not a script): sums kept per field while a script walks its batch, so each
-- is written once afterwards. `fields` lists the fields in first-use order (the order they are
-- written in, the same on every replica and in the AOF).
local function tally(into, fields, field, by)
  if not into[field] then
    into[field] = 0
    fields[#fields + 1] = field
  end
  into[field] = into[field] + by
end
