// Checks a COCO instances dataset (annotations JSON + image folder) before a
// fine-tuning job is queued, so that a dataset lpdetr-train would refuse when
// it starts is refused by StartFineTune instead, with the same wording.
//
// The annotations (ReadCocoAnnotations) get lpdetr-train's structural rules:
// the top level is an object with `images`, `annotations` and `categories`
// arrays, none of them empty (stricter than lpdetr-train, which accepts no
// annotations: a job would have nothing to train on); images have an integer `id` (unique), a
// non-empty string `file_name` and positive integer `width` / `height`;
// categories an integer `id` (unique) and a string `name`; annotations an
// integer `image_id` and `category_id` naming a listed image and category, a
// `bbox` of 4 finite numbers without negative width or height and an
// optional `iscrowd` of 0 / 1. A `file_name` that leaves the image folder
// (absolute, or with `..` going above it) is refused as well. The image files
// (CheckImageFiles) must each be a non-empty regular file under the folder.
//
// Errors (each message names the file and the bad entries):
//   NOT_FOUND          the annotations file or the image folder is missing;
//                      image files are missing or empty (how many, and the
//                      first kMaxListedProblems)
//   PERMISSION_DENIED  the annotations file or folder cannot be read; file
//                      names that leave the image folder
//   INVALID_ARGUMENT   not JSON (with the parser's byte offset), not a
//                      regular file, or structural problems (how many, and
//                      the first kMaxListedProblems by position in the file);
//                      an empty `images`, `annotations` or `categories` array
//                      is one of them
// Structural problems come first: file names are only checked in a file
// without any, and files on disk only when no name leaves the folder.
//
// Cost: one streaming (SAX) pass over the memory-mapped file, without a
// document tree: only the keys checked above are kept, one entry at a time
// (segmentation polygons and other keys are skipped), plus each image's id
// and file name and each annotation's two ids. Image files are stat()ed
// relative to the opened folder, never opened or decoded. A symbolic link
// inside the folder is followed by stat() and not checked against it: the
// data root must be writable only by the operators (see confined_path.h).
//
// Threading: free functions without state; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lpdetr::admin {

// How many problems (or missing files) an error message lists; it always
// says how many there are in all.
inline constexpr std::size_t kMaxListedProblems = 5;

// What a valid dataset holds.
struct DatasetSummary {
  int64_t images = 0;
  int64_t categories = 0;
  int64_t annotations = 0;
  int64_t crowd_annotations = 0;  // iscrowd 1: lpdetr-train does not train on them
};

// One `images` entry of a valid annotations file.
struct CocoImageFile {
  std::size_t index = 0;  // its position in `images`
  int64_t id = 0;
  std::string file_name;
};

// A structurally valid annotations file: its counts and its image files.
struct CocoAnnotations {
  std::string path;  // the file's name in messages
  DatasetSummary summary;
  std::vector<CocoImageFile> images;  // in file order
};

// Reads and checks `annotations_path` (every rule above but the files on
// disk). Messages name the file `shown_as` (empty: annotations_path), so a
// caller can name it as its user did rather than as resolved.
absl::StatusOr<CocoAnnotations> ReadCocoAnnotations(const std::string& annotations_path,
                                                    const std::string& shown_as = "");

// Checks that every image of `annotations` is a non-empty regular file under
// `images_dir`, named `shown_as` in messages (empty: images_dir).
absl::Status CheckImageFiles(const CocoAnnotations& annotations, const std::string& images_dir,
                             const std::string& shown_as = "");

// Both of the above; on success `summary` (may be null) gets the counts.
absl::Status CheckCocoDataset(const std::string& annotations_path, const std::string& images_dir,
                              DatasetSummary* summary);

}  // namespace lpdetr::admin
