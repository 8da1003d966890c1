-- Forward every stable CT series that looks like a CT pulmonary angiogram to the triage
-- daemon (modality "triage" in orthanc.json). The daemon applies its own selection rules
-- too (slice thickness, image type, slice count), so this filter can be generous; the SR
-- and KOS that the daemon sends back are not forwarded again.

-- Lowercase words that mark a CTPA in the study or series description. Lua patterns have
-- no alternation, so each word is searched on its own (plain find, no pattern magic).
local KEYWORDS = { "ctpa", "angio", "pulm", "embol" }

local function looks_like_ctpa(description)
  for _, word in ipairs(KEYWORDS) do
    if string.find(description, word, 1, true) ~= nil then
      return true
    end
  end
  return false
end

function OnStableSeries(seriesId, tags, metadata)
  local modality = string.upper(tags["Modality"] or "")
  if modality ~= "CT" then
    return
  end
  local study = ParseJson(RestApiGet("/series/" .. seriesId .. "/study"))
  local description = string.lower((study["MainDicomTags"]["StudyDescription"] or "") .. " " ..
                                   (tags["SeriesDescription"] or ""))
  if not looks_like_ctpa(description) then
    return
  end
  -- Send asynchronously; Orthanc retries failed jobs per its own settings.
  RestApiPost("/modalities/triage/store", '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}')
  print("forwarded series " .. seriesId .. " to triage")
end
