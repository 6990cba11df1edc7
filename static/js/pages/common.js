// Shared by every page: show server times in the reader's time zone.
import { localizeTimes } from "../lib/format.js";

localizeTimes();
