//! The live carbon APIs' answers (Electricity Maps, WattTime, the GB
//! Carbon Intensity API, the Carbon Aware SDK): any JSON must give readings or
//! an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sprout::carbon::live;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = live::em_reading(&v);
    let _ = live::em_series(&v, "forecast");
    let _ = live::em_series(&v, "history");
    let _ = live::watttime_points(&v);
    let _ = live::sdk_emissions(&v);
    let _ = live::sdk_forecast(&v);
    if let Ok(points) = live::uk_points(&v) {
        if let Some(first) = points.first() {
            let _ = live::hourly(&points, first.at, 48);
        }
    }
});
